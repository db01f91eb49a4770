"""Our GGUF writer against an independent reader: transformers' GGUF loader must get the original logits back.

For Llama, Mistral-style and Qwen2 transformers also builds the config from our metadata, so
those keys are checked by the round trip too. For Qwen3 (head_dim), Gemma 2 (softcaps,
query_pre_attn_scalar) and Gemma 3 (query_pre_attn_scalar, local rope base, layer pattern)
transformers' GGUF loader ignores keys we write, so we hand it the HF config and check those
keys ourselves with gguf's reader.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from layerbisect.errors import InputError
from layerbisect.producers import gguf_writer
from layerbisect.producers.gguf_writer import gguf_tensor_name, write_gguf_from_hf
from layerbisect.producers.tiny import ARCHS as ALL_ARCHS
from layerbisect.producers.tiny import make_tiny_hf

from .conftest_helpers import COS_F32, COS_Q8_0, cosine, logits

# Our writer covers the dense families; MoE GGUFs come from llama.cpp's converter only.
ARCHS = tuple(a for a in ALL_ARCHS if a != "qwen3moe")
# Archs whose every setting transformers reads back from GGUF metadata.
_CONFIG_FROM_GGUF = {"llama", "mistral", "qwen2"}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("tiny")
    return {a: make_tiny_hf(a, root / a) for a in ARCHS}


def _load_gguf(hf_dir, gguf_path, arch: str):
    kw = {} if arch in _CONFIG_FROM_GGUF else {"config": AutoConfig.from_pretrained(hf_dir)}
    return AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32,
                                                **kw).eval()


def _fields(path) -> dict[str, object]:
    r = gguf.GGUFReader(path)
    out = {}
    for k, f in r.fields.items():
        if k.startswith("tokenizer.") or not f.data:
            continue
        vals = [f.parts[i].tolist() for i in f.data]
        vals = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in vals]
        out[k] = vals[0] if len(vals) == 1 else vals
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_f32_round_trip_through_transformers(arch: str, tiny_dirs, tmp_path) -> None:
    hf_dir = tiny_dirs[arch]
    # No "mistral" in general.name: transformers 5.17 cannot map a llama GGUF it thinks is Mistral.
    path = write_gguf_from_hf(hf_dir, tmp_path / f"{arch}.gguf", name=f"tiny-{arch.replace('mistral', 'mstl')}")
    ref = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    got = _load_gguf(hf_dir, path, arch)
    a, b = logits(ref), logits(got)
    c = cosine(a, b)
    assert c >= COS_F32, f"{arch}: cosine {c:.6f}, max |diff| {(a - b).abs().max():.3g}"


def test_llama_without_permutation_is_caught(tiny_dirs, tmp_path, monkeypatch) -> None:
    """The round trip is sensitive to the rope permutation: skipping it must break the logits."""
    monkeypatch.setattr(gguf_writer, "llama_permute", lambda w, n_head, n_kv: w)
    path = write_gguf_from_hf(tiny_dirs["llama"], tmp_path / "bad.gguf", name="bad")
    ref = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float32).eval()
    c = cosine(logits(ref), logits(_load_gguf(tiny_dirs["llama"], path, "llama")))
    assert c < 0.99, f"unpermuted Q/K still gave cosine {c:.5f}: the fixture cannot see rope layout bugs"


def test_q8_0_round_trip_and_tensor_types(tiny_dirs, tmp_path) -> None:
    path = write_gguf_from_hf(tiny_dirs["gemma3"], tmp_path / "g3-q8.gguf", tensor_type="Q8_0")
    r = gguf.GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in r.tensors}
    # 1-D tensors stay F32 (llama.cpp's rule); every matrix is Q8_0 (128 and 256 divide by 32).
    assert {n: ty for n, ty in types.items() if "norm" in n} == {n: "F32" for n in types if "norm" in n}
    assert {ty for n, ty in types.items() if "norm" not in n} == {"Q8_0"}
    ref = AutoModelForCausalLM.from_pretrained(tiny_dirs["gemma3"], dtype=torch.float32).eval()
    c = cosine(logits(ref), logits(_load_gguf(tiny_dirs["gemma3"], path, "gemma3")))
    assert COS_Q8_0 <= c < 1.0, f"Q8_0 round trip cosine {c:.6f}"


def test_gemma_norms_stored_plus_one(tiny_dirs, tmp_path) -> None:
    from safetensors.torch import load_file

    hf = load_file(tiny_dirs["gemma3"] / "model.safetensors")
    path = write_gguf_from_hf(tiny_dirs["gemma3"], tmp_path / "g3.gguf")
    r = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}
    for hf_name, gg_name in [("model.layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight"),
                             ("model.layers.1.pre_feedforward_layernorm.weight", "blk.1.ffn_norm.weight"),
                             ("model.norm.weight", "output_norm.weight")]:
        np.testing.assert_array_equal(r[gg_name], hf[hf_name].numpy() + 1.0, err_msg=gg_name)


def test_metadata_transformers_does_not_read(tiny_dirs, tmp_path) -> None:
    f2 = _fields(write_gguf_from_hf(tiny_dirs["gemma2"], tmp_path / "g2.gguf"))
    assert f2["gemma2.attn_logit_softcapping"] == 50.0 and f2["gemma2.final_logit_softcapping"] == 30.0
    assert f2["gemma2.attention.sliding_window"] == 8
    assert f2["gemma2.attention.sliding_window_pattern"] == [True, False]
    assert f2["gemma2.attention.key_length"] == 32
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(tmp_path / "g2.gguf").tensors}

    f3 = _fields(write_gguf_from_hf(tiny_dirs["gemma3"], tmp_path / "g3.gguf"))
    assert f3["gemma3.rope.freq_base"] == 1_000_000.0 and f3["gemma3.rope.freq_base_swa"] == 10000.0
    assert f3["gemma3.attention.sliding_window_pattern"] == [True] * 5 + [False]
    assert "gemma3.attn_logit_softcapping" not in f3

    fq = _fields(write_gguf_from_hf(tiny_dirs["qwen3"], tmp_path / "q3.gguf"))
    assert fq["qwen3.attention.key_length"] == 64 and fq["qwen3.embedding_length"] == 128


def test_llama_rope_scaling_metadata(tmp_path) -> None:
    d = make_tiny_hf("llama", tmp_path / "lin", rope_scaling={"rope_type": "linear", "factor": 2.0})
    f = _fields(write_gguf_from_hf(d, tmp_path / "lin.gguf"))
    assert f["llama.rope.scaling.factor"] == 2.0
    assert bytes(f["llama.rope.scaling.type"]).decode() == "linear"
    rs = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
    d3 = make_tiny_hf("llama", tmp_path / "l3", rope_scaling=rs)
    r = gguf.GGUFReader(write_gguf_from_hf(d3, tmp_path / "l3.gguf"))
    freqs = next(np.asarray(t.data) for t in r.tensors if t.name == "rope_freqs.weight")
    assert freqs.shape == (16,) and freqs[0] == 1.0 and freqs[-1] == 8.0  # high freqs kept, low freqs scaled


@pytest.mark.parametrize("arch", ARCHS)
def test_tensor_names_match_gguf_py(arch: str, tiny_dirs) -> None:
    """Our name map agrees with gguf-py's own map (which transformers and llama.cpp use)."""
    from safetensors import safe_open

    gg_arch = {"mistral": "llama"}.get(arch, arch)
    m = gguf.get_tensor_name_map(gguf.MODEL_ARCH[gg_arch.upper()], 8)
    with safe_open(tiny_dirs[arch] / "model.safetensors", "pt") as f:
        names = list(f.keys())
    for n in names:
        ours = gguf_tensor_name(gg_arch, n)
        theirs = m.get_name(n, try_suffixes=(".weight", ".bias"))
        if n == "lm_head.weight" and gg_arch == "gemma2":
            continue  # never written for gemma2
        assert ours == theirs, f"{n}: ours {ours}, gguf-py {theirs}"


def test_bad_inputs(tiny_dirs, tmp_path) -> None:
    with pytest.raises(InputError, match="tensor_type"):
        write_gguf_from_hf(tiny_dirs["llama"], tmp_path / "x.gguf", tensor_type="Q4_K")
    with pytest.raises(InputError, match="config.json"):
        write_gguf_from_hf(tmp_path, tmp_path / "x.gguf")
