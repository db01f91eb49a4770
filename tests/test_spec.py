"""The per-layer spec and what is derived from the built graph, per family.

Each family's adapter reads a HF config made by transformers' own config class; the built
graph's capture points must be exactly what a forward pass records, every parameter must
have a GGUF name among the tensors gguf-py lists for that architecture
(``gguf.MODEL_TENSORS``) and a HF name among those transformers' ``save_pretrained`` writes.
A config the spec cannot build is one ``InputError`` naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
import torch

from layerbisect.errors import InputError
from layerbisect.families import families, family_of, spec_from_gguf, spec_from_hf
from layerbisect.graph import Decoder, capture_points, meta_model, quantizable_linears
from layerbisect.graph.inventory import layer_fp32_bytes, params
from layerbisect.graph.names import gguf_source, hf_fused_source, hf_param_name, pattern_of
from layerbisect.spec import MoESpec

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)


QWEN35_LINEAR = dict(linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                     linear_value_head_dim=16, linear_conv_kernel_dim=4,
                     layer_types=["linear_attention", "full_attention", "linear_attention"])


def _configs() -> dict[str, object]:
    t = transformers
    return {
        "llama": t.LlamaConfig(**COMMON, tie_word_embeddings=False),
        "mistral": t.MistralConfig(**COMMON, head_dim=32, tie_word_embeddings=False),
        "qwen2": t.Qwen2Config(**COMMON),
        "qwen3": t.Qwen3Config(**COMMON, head_dim=32),
        "gemma2": t.Gemma2Config(**COMMON, head_dim=16, query_pre_attn_scalar=16, sliding_window=8),
        "gemma3": t.Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 6}, head_dim=16, query_pre_attn_scalar=16,
                                     sliding_window=8),
        "qwen3_moe": t.Qwen3MoeConfig(**COMMON, head_dim=16, moe_intermediate_size=32, num_experts=8,
                                      num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
                                      tie_word_embeddings=False),
        **{f"gemma4_{v}": _gemma4(v) for v in ("dense", "moe", "ple")},
        "qwen3_5": t.Qwen3_5TextConfig(**COMMON, head_dim=16, **QWEN35_LINEAR),
        "qwen3_5_moe": t.Qwen3_5MoeTextConfig(**{k: v for k, v in COMMON.items() if k != "intermediate_size"},
                                              head_dim=16, moe_intermediate_size=32,
                                              shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=2,
                                              **QWEN35_LINEAR),
    }


def _gemma4(variant: str):
    from layerbisect.producers.tiny_gemma4 import gemma4_config

    cfg = gemma4_config(variant)
    cfg.vocab_size = cfg.vocab_size_per_layer_input = 300
    return cfg


CONFIGS = _configs()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def spec_case(request):
    cfg = CONFIGS[request.param]
    return request.param, cfg, spec_from_hf(cfg.to_dict(), path=f"{request.param}/config.json")


def test_every_family_is_registered_once():
    fams = families()
    archs = [a for f in fams.values() for a in f.gguf_archs]
    types = [t for f in fams.values() for t in f.hf_model_types]
    assert len(archs) == len(set(archs)) and len(types) == len(set(types))
    assert {"llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "gemma4"} <= set(archs)


def test_heterogeneous_layers_are_data(spec_case):
    name, cfg, spec = spec_case
    if name == "qwen3_moe":  # mlp_only_layers=[1]: a dense layer between MoE layers
        kinds = [ls.ffn.kind for ls in spec.layers]
        assert kinds == ["moe", "dense", "moe"]
        moe = spec.layers[0].ffn
        assert isinstance(moe, MoESpec) and moe.n_experts == 8 and moe.router.top_k == 2 and moe.router.norm_topk
        assert layer_fp32_bytes(spec, 0) > layer_fp32_bytes(spec, 1)
    if name.startswith("qwen3_5"):  # a recurrent mixer between attention layers; gated attention, partial rope
        assert [ls.mixer.kind for ls in spec.layers] == ["gated_deltanet", "attention", "gated_deltanet"]
        dn, attn = spec.layers[0].mixer, spec.layers[1].mixer
        assert (dn.n_k_heads, dn.n_v_heads, dn.conv_dim) == (2, 4, 2 * 32 + 64)
        assert attn.output_gate and attn.qk_norm and attn.rope.dim == 4 and spec.hf_norm_offset == 1.0
        if name == "qwen3_5_moe":
            moe = spec.layers[0].ffn
            assert isinstance(moe, MoESpec) and moe.shared_d_ff == 48 and moe.shared_gate and moe.router.norm_topk
    if name == "gemma3":  # 5 sliding : 1 global, local rope base on sliding layers
        windows = [ls.mixer.window for ls in spec.layers]
        assert windows == [8, 8, 8, 8, 8, None]
        assert spec.layers[0].mixer.rope.base == 10_000.0 and spec.layers[5].mixer.rope.base == 1_000_000.0


def test_capture_points_are_what_a_forward_records(spec_case):
    name, _, spec = spec_case
    torch.manual_seed(0)
    model = Decoder(spec).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    from layerbisect.capture import Captures

    caps = Captures()
    model.rec.captures = caps
    model(torch.arange(1, 11))
    assert caps.names() == list(capture_points(spec)), name


def test_every_parameter_has_a_gguf_name_of_this_architecture(spec_case):
    name, cfg, spec = spec_case
    if name == "qwen3_moe":  # llama.cpp's qwen3moe has no dense layers (its converter refuses mlp_only_layers)
        spec = spec_from_hf({**cfg.to_dict(), "mlp_only_layers": []})
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH[spec.arch.upper()]]}
    fam = family_of(spec)
    for p in params(meta_model(spec)):
        if p.name == "lm_head.weight" and spec.tied_embeddings:
            continue
        src = gguf_source(p.name, fam.gguf_names)
        assert src is not None, f"{name}: no GGUF name for {p.name}"
        i = pattern_of(p.name)[1]
        # the tensor name without its leaf (``.weight``), or the whole name for leafless ones (``blk.{i}.ssm_a``)
        generic = {t.replace(f"blk.{i}.", "blk.{bid}.") if i is not None else t
                   for t in (src.tensor.rsplit(".", 1)[0], src.tensor)}
        assert generic & allowed, f"{name}: {p.name} → {src.tensor}, not a {spec.arch} tensor in gguf-py"


def test_hf_names_are_what_transformers_writes(spec_case, tmp_path):
    name, cfg, spec = spec_case
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        on_disk = set(f.keys())
    fam = family_of(spec)
    ours = set()
    for p in params(meta_model(spec)):
        if p.name == "lm_head.weight" and spec.tied_embeddings:
            continue
        hf = hf_param_name(p.name, fam.hf_names)
        fused = hf_fused_source(p.module, fam.hf_fused)
        if "model." + hf not in on_disk and fused is not None:  # Gemma 4: fused 3-D experts on disk
            hf = fused[0]
        ours.add(hf if hf.startswith("lm_head") else "model." + hf)
    assert ours == on_disk, f"{name}: ours only {sorted(ours - on_disk)[:5]}, theirs only {sorted(on_disk - ours)[:5]}"


def test_linears_in_execution_order(spec_case):
    _, _, spec = spec_case
    names = quantizable_linears(spec)
    first = "per_layer.proj" if spec.per_layer_input else (
        "layers.0.attn.in_proj_qkv" if spec.layers[0].mixer.kind == "gated_deltanet" else "layers.0.attn.q_proj")
    assert names[0] == first  # PLE runs first
    layers = [int(n.split(".")[1]) for n in names if n.startswith("layers.")]
    assert layers == sorted(layers)
    if isinstance(spec.layers[0].ffn, MoESpec):
        assert "layers.0.mlp.router" in names and "layers.0.mlp.experts.7.down_proj" in names


@pytest.mark.parametrize(
    "drop,field",
    [("num_experts_per_tok", "num_experts_per_tok"), ("hidden_size", "hidden_size"),
     ("moe_intermediate_size", "moe_intermediate_size")],
)
def test_missing_field_is_one_error_naming_it(drop, field):
    d = CONFIGS["qwen3_moe"].to_dict()
    d.pop(drop)
    with pytest.raises(InputError) as e:
        spec_from_hf(d, path="x/config.json")
    assert field in str(e.value) and "x/config.json" in str(e.value)


def test_bad_values_are_errors_naming_the_field():
    d = CONFIGS["qwen3"].to_dict()
    for key, value, needle in (("hidden_size", "640px", "not an integer"), ("num_attention_heads", 0, "outside"),
                               ("num_hidden_layers", -4, "outside")):
        bad = {**d, key: value}
        with pytest.raises(InputError, match=needle) as e:
            spec_from_hf(bad, path="c.json")
        assert key in str(e.value)
    with pytest.raises(InputError, match="rope scaling 'dynamic' is not supported"):
        spec_from_hf({**d, "rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}})
    with pytest.raises(InputError, match="unsupported model_type 'phi3'"):
        spec_from_hf({**d, "model_type": "phi3"})


def test_gguf_metadata_missing_key_names_it():
    fields = {"general.architecture": "qwen3moe", "qwen3moe.block_count": 2, "qwen3moe.embedding_length": 64,
              "qwen3moe.attention.head_count": 4, "qwen3moe.expert_count": 8}
    with pytest.raises(InputError, match="qwen3moe.expert_used_count"):
        spec_from_gguf(fields, [], 300, path="m.gguf")


def test_cli_exit_2_for_a_config_the_spec_cannot_build(tmp_path: Path):
    import subprocess
    import sys

    cfg = CONFIGS["qwen3_moe"].to_dict()
    cfg.pop("num_experts_per_tok")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(300, 64)}, str(tmp_path / "model.safetensors"))
    r = subprocess.run([sys.executable, "-m", "layerbisect.cli.app", "run", str(tmp_path), "--tokens", "1,2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "num_experts_per_tok" in lines[0] and "Traceback" not in r.stderr


def test_not_the_same_model_names_the_sizes_that_differ():
    """A candidate with one layer's sizes changed is refused, naming the layer and the size (not two tuples)."""
    from types import SimpleNamespace

    from layerbisect.runner import check_same_model

    def side(path: str, **kw):
        cfg = transformers.Qwen3MoeConfig(**{**COMMON, **kw}, head_dim=16, moe_intermediate_size=32, num_experts=8,
                                          num_experts_per_tok=2, mlp_only_layers=[1]).to_dict()
        return SimpleNamespace(config=spec_from_hf(cfg), path=path)

    ref = side("ref.gguf")
    check_same_model(ref, side("same/"))
    with pytest.raises(InputError) as e:
        check_same_model(ref, side("cand/", intermediate_size=128, num_key_value_heads=4))
    msg = str(e.value)
    assert msg == ("cand/: is not the same model as ref.gguf (layers.0 n_kv_heads 4, the reference's 2; "
                   "layers.1 n_kv_heads 4, the reference's 2; layers.1 d_ff 128, the reference's 96 (+1 more))"), msg
