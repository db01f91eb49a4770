"""Capture tiny random HF transformers models and read the dumps back.

Ground truth is what transformers itself reports: ``output_hidden_states`` (embeddings,
layer outputs, and, as its last entry, the final norm output) and the logits. The other
points have no HF counterpart; for those we check names, order, shapes and rows.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from layerbisect.engines import capture_activations, load_dump  # noqa: E402
from layerbisect.engines.dump import align_to_dump  # noqa: E402
from layerbisect.errors import InputError  # noqa: E402
from layerbisect.families import spec_from_hf  # noqa: E402
from layerbisect.graph import capture_points  # noqa: E402

N_LAYERS = 2
IDS = [2, 17, 5, 99, 42, 7]


def _tiny(arch: str) -> torch.nn.Module:
    common = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if arch == "llama":
        cfg, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    elif arch == "qwen2":
        cfg, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    elif arch == "qwen3":
        cfg, cls = transformers.Qwen3Config(head_dim=16, **common), transformers.Qwen3ForCausalLM
    elif arch == "gemma2":
        cfg = transformers.Gemma2Config(head_dim=16, sliding_window=4, final_logit_softcapping=3.0, **common)
        cls = transformers.Gemma2ForCausalLM
    elif arch == "gemma3":
        cfg, cls = (
            transformers.Gemma3TextConfig(head_dim=16, sliding_window=4, **common),
            transformers.Gemma3ForCausalLM,
        )
    else:
        raise AssertionError(arch)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    # Norm weights start at 0 or 1 (identity-ish); random ones make a wrong-norm mapping visible.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.normal_(0.0, 0.3)
    return model


ARCHS = ["llama", "qwen2", "qwen3", "gemma2", "gemma3"]


@pytest.fixture(scope="module", params=ARCHS)
def captured(request, tmp_path_factory):
    arch = request.param
    model = _tiny(arch)
    out = tmp_path_factory.mktemp(arch)
    with torch.no_grad(), capture_activations(model, out, token_ids=IDS) as cap:
        hf = model(torch.tensor([IDS]), output_hidden_states=True)
    return arch, model, out, cap, hf


def test_names_in_execution_order(captured):
    arch, model, out, cap, _ = captured
    points = capture_points(spec_from_hf(model.config.to_dict()))
    expected = [n for n in points if n not in cap.unreachable()]
    assert cap.names == expected, f"{arch}: {cap.names}"
    # HF reaches every point but rope'd q/k (and Gemma 2's pre-softcap scores).
    unreachable_ops = {n.split(".", 2)[2] for n in cap.unreachable()}
    assert unreachable_ops == ({"attn.q", "attn.k", "attn.scores"} if arch == "gemma2" else {"attn.q", "attn.k"})
    assert cap.problems == []
    man = json.loads((out / "manifest.json").read_text())
    assert man["names"] == cap.names
    assert man["source"]["engine"] == "transformers" and man["source"]["model_type"] == model.config.model_type
    assert man["name_map"]["meta"]["name"] == f"hf_{arch}"


def test_shapes_rows_and_tokens(captured):
    arch, model, out, cap, _ = captured
    cfg = model.config
    caps = load_dump(out)
    assert caps.token_ids == IDS and caps.meta["positions"] == list(range(len(IDS)))
    feats = {
        "embed": cfg.hidden_size,
        "attn.v": cfg.num_key_value_heads * (getattr(cfg, "head_dim", None) or 16),
        "attn.out": cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or 16),
        "mlp.gate": cfg.intermediate_size,
        "mlp.up": cfg.intermediate_size,
        "mlp.act": cfg.intermediate_size,
        "logits": cfg.vocab_size,
        "logits.pre_softcap": cfg.vocab_size,
    }
    for name in caps:
        op = name.split(".", 2)[2] if name.startswith("layers.") else name
        t = caps[name]
        assert t.dtype == torch.float32
        assert tuple(t.shape) == (len(IDS), feats.get(op, cfg.hidden_size)), name


def test_values_equal_hf_hidden_states(captured):
    arch, model, out, cap, hf = captured
    caps = load_dump(out)
    hs = [h[0] for h in hf.hidden_states]
    # hidden_states = (embeddings, layer 0 out, ..., layer n-2 out, final norm out)
    assert torch.equal(caps["embed"], hs[0])
    for i in range(N_LAYERS - 1):
        assert torch.equal(caps[f"layers.{i}.out"], hs[i + 1]), i
    assert torch.equal(caps["final_norm"], hs[-1])
    assert torch.equal(caps["logits"], hf.logits[0])
    if arch == "gemma2":  # lm_head is before the final softcap: check the map's claim
        cap_ = model.config.final_logit_softcapping
        torch.testing.assert_close(caps["logits"], cap_ * torch.tanh(caps["logits.pre_softcap"] / cap_))
        assert not torch.allclose(caps["logits"], caps["logits.pre_softcap"])
    else:
        assert torch.equal(caps["logits"], caps["logits.pre_softcap"])
    # The residual stream is consistent: out = attn_residual + (post-normed) MLP output.
    mlp_out = "mlp.post_norm" if arch.startswith("gemma") else "mlp.down"
    for i in range(N_LAYERS):
        torch.testing.assert_close(
            caps[f"layers.{i}.attn_residual"] + caps[f"layers.{i}.{mlp_out}"], caps[f"layers.{i}.out"]
        )


def test_gemma_embed_is_scaled():
    """HF's Gemma embedding module multiplies by √d itself: 'embed' must be after the scale."""
    model = _tiny("gemma3")
    ids = torch.tensor([IDS])
    with torch.no_grad():
        raw = model.model.embed_tokens.weight[ids[0]]
        hf = model(ids, output_hidden_states=True)
    torch.testing.assert_close(hf.hidden_states[0][0], raw * model.config.hidden_size**0.5)


def test_decode_steps_and_positions(tmp_path):
    """Prefill then two cached decode steps, keeping positions 3..7: rows follow positions."""
    model = _tiny("qwen3")
    ids = torch.tensor([IDS])
    with torch.no_grad(), capture_activations(model, tmp_path, positions=range(3, 8)) as cap:
        o = model(ids, use_cache=True)
        seq = list(IDS)
        for _ in range(2):
            nxt = o.logits[:, -1:].argmax(-1)
            seq.append(int(nxt))
            o = model(nxt, past_key_values=o.past_key_values, use_cache=True)
    assert cap.problems == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "manifest.json",
        "step00000.safetensors",
        "step00001.safetensors",
        "step00002.safetensors",
    ]
    caps = load_dump(tmp_path)
    assert caps.meta["positions"] == [3, 4, 5, 6, 7] and caps.token_ids == seq[3:8]
    with torch.no_grad():
        full = model(torch.tensor([seq]), output_hidden_states=True)
    torch.testing.assert_close(caps["layers.0.out"], full.hidden_states[1][0, 3:8], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(caps["logits"], full.logits[0, 3:8], rtol=1e-5, atol=1e-5)


def test_append_steps_across_blocks(tmp_path):
    """step>0 appends to the dump already there; positions continue."""
    model = _tiny("llama")
    with torch.no_grad():
        with capture_activations(model, tmp_path, patterns=["layers.?.out"]):
            o = model(torch.tensor([IDS[:4]]), use_cache=True)
        with capture_activations(model, tmp_path, patterns=["layers.?.out"], step=1):
            model(torch.tensor([IDS[4:]]), past_key_values=o.past_key_values, use_cache=True)
        full = model(torch.tensor([IDS]), output_hidden_states=True)
    caps = load_dump(tmp_path)
    assert caps.names() == ["layers.0.out", "layers.1.out"]
    assert caps.token_ids == IDS
    torch.testing.assert_close(caps["layers.0.out"], full.hidden_states[1][0], rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="already has steps"):
        with capture_activations(model, tmp_path, step=1):
            pass


def test_patterns_select_and_hook_only_what_is_needed(tmp_path):
    model = _tiny("gemma3")
    with torch.no_grad(), capture_activations(model, tmp_path, patterns=["layers.1.attn*", "logits"]) as cap:
        model(torch.tensor([IDS]))
    assert cap.names == [
        "layers.1.attn_norm",
        "layers.1.attn.v",
        "layers.1.attn.out",
        "layers.1.attn.o_proj",
        "layers.1.attn.post_norm",
        "layers.1.attn_residual",
        "logits",
    ]
    assert {b.module for b in cap.bindings} == {
        "model.layers.1.input_layernorm",
        "model.layers.1.self_attn.v_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.post_attention_layernorm",
        "model.layers.1.pre_feedforward_layernorm",
        "",
    }
    # The hooks are gone after the block.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_input_raises(tmp_path):
    model = _tiny("llama")
    with pytest.raises(InputError, match="batch size 2"):
        with torch.no_grad(), capture_activations(model, tmp_path / "b"):
            model(torch.tensor([IDS, IDS]))
    with pytest.raises(InputError, match="token_ids= says"):
        with torch.no_grad(), capture_activations(model, tmp_path / "t", token_ids=[9] * len(IDS)):
            model(torch.tensor([IDS]))
    with pytest.raises(InputError, match="no module"):
        capture_activations(model, tmp_path / "n", patterns=["nothing*"])
    with pytest.raises(InputError, match="not a built-in map"):
        capture_activations(model, tmp_path / "m", name_map="nope")


def test_align_reference_rows_to_dump(tmp_path):
    """A dump of positions 2..4 lines up with rows 2..4 of a full-sequence capture."""
    model = _tiny("llama")
    with torch.no_grad():
        with capture_activations(model, tmp_path / "full"):
            model(torch.tensor([IDS]))
        with capture_activations(model, tmp_path / "part", positions=[2, 3, 4]):
            model(torch.tensor([IDS]))
    full, part = load_dump(tmp_path / "full"), load_dump(tmp_path / "part")
    ref = align_to_dump(full, part)
    assert ref.token_ids == part.token_ids == IDS[2:5]
    assert torch.equal(ref["layers.1.out"], part["layers.1.out"])
