"""Gemma 4 against transformers' own implementation (``modeling_gemma4.py``, eager attention).

Fast tier: tiny random Gemma 4s with a 300-token vocabulary, saved by transformers and run
through our graph by the candidate runner (dense HF weights), for the three variants of
``producers/tiny_gemma4.py`` (dense with ``attention_k_eq_v``, MoE, per-layer inputs with
shared KV and double-wide MLPs): logits, routing, greedy continuation; activation patching
and streaming on the layers that read shared K/V and per-layer inputs; lenient loading of
missing scales; the norm convention per family.

Slow tier (``slow``; needs llama.cpp's converter, fetched by ``producers/llamacpp.py``): the
same variants with the real ``gemma-4`` vocabulary, converted by llama.cpp's
``convert_hf_to_gguf.py``, through the *reference* runner; and llmcompressor candidates of
each format compared with that reference.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from layerbisect.families import spec_from_hf
from layerbisect.producers.tiny_gemma4 import VARIANTS, gemma4_config, randomize

transformers = pytest.importorskip("transformers")

IDS = [2, 17, 5, 99, 42, 7, 123, 250, 8, 64, 33, 91, 12, 200]  # longer than the sliding window (8)


def _small(variant: str):
    cfg = gemma4_config(variant)
    cfg.vocab_size = cfg.vocab_size_per_layer_input = 300
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    randomize(model, 0)
    return model.eval()


@pytest.fixture(scope="module", params=VARIANTS)
def small(request, tmp_path_factory):
    """(variant, transformers model, saved HF dir) with a small vocabulary."""
    model = _small(request.param)
    out = tmp_path_factory.mktemp(f"g4-{request.param}")
    model.save_pretrained(out)
    return request.param, model, out


def _routes(model):
    """Layer → (top-k weights, top-k ids) from transformers' routers, by forward hooks."""
    routes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, layer in enumerate(model.model.layers):
        if getattr(layer, "router", None) is not None:
            layer.router.register_forward_hook(lambda m, a, o, i=i: routes.__setitem__(i, (o[1], o[2])))
    return routes


def test_graph_matches_transformers(small):
    from layerbisect.candidates.runner import CandidateRunner

    variant, model, path = small
    routes = _routes(model)
    with torch.no_grad():
        theirs = model(torch.tensor([IDS])).logits[0].double()
    runner = CandidateRunner(path).activate()
    caps = runner.run(IDS)
    ours = caps["logits"].double()
    cos = torch.nn.functional.cosine_similarity(ours, theirs, dim=-1)
    assert cos.min() >= 0.9999, f"{variant}: min cosine {cos.min():.6f} at position {int(cos.argmin())}"
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1)), variant
    for i, (w, idx) in routes.items():
        mine = caps[f"layers.{i}.mlp.route"].long()
        assert torch.equal(mine.sort(-1).values, idx.sort(-1).values), f"layer {i} routes differently"
        torch.testing.assert_close(caps[f"layers.{i}.mlp.route_weights"], w.float(), rtol=1e-5, atol=1e-6)
    assert (variant == "moe") == bool(routes)
    ours_gen = runner.generate(IDS, 6)
    theirs_gen = model.generate(torch.tensor([IDS]), max_new_tokens=6, do_sample=False,
                                attention_mask=torch.ones(1, len(IDS), dtype=torch.long))[0, len(IDS):].tolist()
    assert ours_gen == theirs_gen, variant


def test_spec_of_each_variant():
    d, m, p = (spec_from_hf(gemma4_config(v).to_dict()) for v in VARIANTS)
    # per-layer geometry (per_layer_config): the global layer has its own head_dim and kv heads
    assert [ls.mixer.head_dim for ls in d.layers] == [16] * 5 + [32]
    assert [ls.mixer.n_kv_heads for ls in d.layers] == [2] * 5 + [1]
    assert [ls.mixer.k_eq_v for ls in d.layers] == [False] * 5 + [True]  # attention_k_eq_v: global layers only
    assert [ls.mixer.window for ls in d.layers] == [8] * 5 + [None]
    glob, slid = d.layers[5].mixer.rope, d.layers[0].mixer.rope
    assert (glob.base, glob.dim, glob.active_pairs) == (1e6, 32, 4)  # proportional: 0.25 · 32 / 2 pairs rotate
    assert (slid.base, slid.dim, slid.active_pairs) == (1e4, 16, None)
    assert all(ls.mixer.scale == 1.0 and ls.mixer.v_norm and ls.mixer.qk_norm for ls in d.layers)
    assert all(ls.out_scale for ls in d.layers) and d.final_softcap == 30.0
    assert {ls.ffn.kind for ls in m.layers} == {"dense+moe"}
    moe = m.layers[0].ffn
    assert (moe.d_ff, moe.n_experts, moe.d_ff_expert, moe.router.top_k, moe.router.norm_topk) == (64, 8, 32, 2, True)
    # shared KV: the last non-shared layer of the same type; double-wide MLP on the shared layers
    assert [ls.mixer.kv_source for ls in p.layers] == [None] * 4 + [2, 3]
    assert [ls.ffn.d_ff for ls in p.layers] == [128] * 4 + [256] * 2
    assert p.per_layer_input == 16 and all(ls.per_layer_input == 16 for ls in p.layers)


def test_norm_convention_per_family():
    """HF Gemma 2/3 norms are x·(1 + w) (the graph adds 1 on load); Gemma 4's are plain x·w (nothing added)."""
    t = transformers
    common = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16)
    offsets = {
        "gemma2": spec_from_hf(t.Gemma2Config(**common).to_dict()).hf_norm_offset,
        "gemma3": spec_from_hf(t.Gemma3TextConfig(**common).to_dict()).hf_norm_offset,
        "gemma4": spec_from_hf(gemma4_config("dense").to_dict()).hf_norm_offset,
    }
    assert offsets == {"gemma2": 1.0, "gemma3": 1.0, "gemma4": 0.0}
    from transformers.models.gemma4.modeling_gemma4 import Gemma4RMSNorm

    norm = Gemma4RMSNorm(8)
    with torch.no_grad():
        norm.weight.fill_(0.5)
    x = torch.randn(3, 8)
    from layerbisect.graph import RMSNorm

    ours = RMSNorm(8, 1e-6)
    with torch.no_grad():
        ours.weight.fill_(0.5 + offsets["gemma4"])
    torch.testing.assert_close(ours(x), norm(x))


def test_patching_and_probes_reach_shared_kv_and_per_layer_inputs(small):
    """A layer patched on its own reference input (shared K/V and per-layer inputs from the captures) reproduces
    the whole-sequence pass exactly: zero local error in every layer."""
    from layerbisect.candidates.runner import CandidateRunner
    from layerbisect.graph.context import context_points
    from layerbisect.localize import patch_layers

    variant, _, path = small
    runner = CandidateRunner(path).activate()
    caps = runner.run(IDS)
    rows = patch_layers(caps, runner, len(IDS))
    assert max(r["local_rel_l2"] for r in rows) < 1e-6, [(r["layer"], r["local_rel_l2"]) for r in rows]
    if variant == "ple":  # layers 4, 5 read layer 2's and 3's K/V; every layer reads its per-layer inputs
        spec = runner.config
        assert context_points(spec, 4) == ["layers.2.attn.k", "layers.2.attn.v", "per_layer.inputs"]
        assert context_points(spec, 5) == ["layers.3.attn.k", "layers.3.attn.v", "per_layer.inputs"]
        assert context_points(spec, 0) == ["per_layer.inputs"]


def test_streamed_equals_resident(small):
    from layerbisect.candidates.runner import CandidateRunner

    variant, _, path = small
    resident = CandidateRunner(path).activate().run(IDS)
    s = CandidateRunner(path)
    s.stream = True
    streamed = s.activate()
    assert streamed.streaming
    caps = streamed.run(IDS)
    assert caps.names() == resident.names()
    for n in ("logits", "layers.5.out", "layers.4.attn.out"):
        torch.testing.assert_close(caps[n], resident[n], rtol=0, atol=1e-5)


def test_missing_scales_load_as_one_and_are_named(small, tmp_path):
    """A lenient engine runs a missing layer_scalar / router scale as 1.0; the loader does the same and says so."""
    from safetensors.torch import load_file, save_file

    from layerbisect.audit.causes import from_load_notes
    from layerbisect.candidates.runner import CandidateRunner

    variant, _, path = small
    if variant != "moe":
        pytest.skip("router scales exist in the MoE variant")
    import shutil

    shutil.copytree(path, tmp_path / "c", dirs_exist_ok=True)
    st = tmp_path / "c" / "model.safetensors"
    tensors = load_file(st)
    drop = (".layer_scalar", ".router.scale", ".router.per_expert_scale")
    save_file({k: v for k, v in tensors.items() if not k.endswith(drop)}, str(st), metadata={"format": "pt"})
    runner = CandidateRunner(tmp_path / "c").activate()
    notes = runner.load_notes
    assert set(notes["missing_kinds"].values()) == {"scale"} and len(notes["missing"]) == 6 * 3
    assert float(runner.model.layers[0].layer_scalar) == 1.0
    assert torch.all(runner.model.layers[0].mlp.expert_scale == 1.0)
    ev = from_load_notes(notes)
    assert {(e.cause, e.layer, e.op) for e in ev if e.layer == 0} == {
        ("missing_scale", 0, "layer_scalar"), ("missing_scale", 0, "mlp.router_scale"),
        ("missing_scale", 0, "mlp.expert_scale")}


def test_unscaled_norm_whatif_swaps_exactly_the_residual_and_head_norms(small):
    from layerbisect.candidates.qlinear import QuantOptions
    from layerbisect.candidates.runner import CandidateRunner
    from layerbisect.candidates.whatif_norms import UnscaledFP8Norm

    variant, _, path = small
    runner = CandidateRunner(path, options=QuantOptions(norm_act_quant="unscaled")).activate()
    swapped = sorted(n for n, mod in runner.model.named_modules() if isinstance(mod, UnscaledFP8Norm))
    per_layer = ["post_attn_norm", "post_mlp_norm"] + (["ple.post_norm"] if variant == "ple" else [])
    assert swapped == sorted(["final_norm"] + [f"layers.{i}.{n}" for i in range(6) for n in per_layer])
    x = torch.randn(4, 64)
    norm = runner.model.final_norm
    y = torch.nn.functional.rms_norm(x, (64,), eps=norm.eps) * norm.weight
    out = norm(x)
    assert torch.allclose(out.abs().amax(-1), torch.full((4,), 448.0))  # each token spans the FP8 range
    assert torch.nn.functional.cosine_similarity(out, y, dim=-1).min() > 0.999  # same direction, scale dropped


# ---------------------------------------------------------------------------------------------------------------
# slow: the real vocabulary, llama.cpp's converter, llmcompressor candidates
# ---------------------------------------------------------------------------------------------------------------


def _real(variant: str):
    pytest.importorskip("layerbisect.producers.llamacpp", reason="llama.cpp producers not installed")
    from layerbisect.producers.tiny_gemma4 import tiny_gemma4

    return tiny_gemma4(variant)


PROMPT = "The capital of France is Paris, and the capital of Italy is Rome. The quick brown fox"


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_on_llamacpp_gguf_matches_transformers(variant):
    from layerbisect.references.runner import ReferenceRunner

    src = _real(variant)
    ref = ReferenceRunner(src["gguf"]).activate()
    ids = ref.tokenizer.encode(PROMPT)
    assert ids[:6] == [2, 818, 5279, 529, 7001, 563]  # <bos> The capital of France is (the gemma4 tokenizer)
    model = transformers.AutoModelForCausalLM.from_pretrained(src["hf"], dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    routes = _routes(model)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0].double()
    caps = ref.run(ids)
    cos = torch.nn.functional.cosine_similarity(caps["logits"].double(), theirs, dim=-1)
    assert cos.min() >= 0.9999, f"{variant}: min cosine {cos.min():.8f}"
    assert torch.equal(caps["logits"].argmax(-1), theirs.argmax(-1))
    for i, (_, idx) in routes.items():
        assert torch.equal(caps[f"layers.{i}.mlp.route"].long().sort(-1).values, idx.sort(-1).values), i
    gen = model.generate(torch.tensor([ids[:8]]), max_new_tokens=6, do_sample=False,
                         attention_mask=torch.ones(1, 8, dtype=torch.long))[0, 8:].tolist()
    assert ref.generate(ids[:8], 6) == gen


@pytest.mark.slow
def test_llamacpp_converter_keeps_gemma4_norms_unshifted():
    """llama.cpp's Gemma 4 converter writes the HF norm weights as they are (norm_shift 0, unlike Gemma 2/3)."""
    from safetensors import safe_open

    from layerbisect.references.gguf_file import GGUFFile
    from layerbisect.references.gguf_model import dequantize_source

    src = _real("dense")
    f = GGUFFile(src["gguf"])
    with safe_open(src["hf"] / "model.safetensors", "pt") as st:
        for hf, gg in (("model.layers.0.input_layernorm.weight", "blk.0.attn_norm.weight"),
                       ("model.layers.0.self_attn.q_norm.weight", "blk.0.attn_q_norm.weight"),
                       ("model.norm.weight", "output_norm.weight")):
            torch.testing.assert_close(dequantize_source(f, gg), st.get_tensor(hf).float(), rtol=0, atol=0)
    assert json.loads((src["hf"] / "config.json").read_text())["model_type"] == "gemma4_text"


@pytest.mark.slow
@pytest.mark.parametrize("variant,scheme", [("dense", "FP8_DYNAMIC"), ("dense", "FP8_BLOCK"), ("moe", "NVFP4"),
                                            ("ple", "NVFP4")])
def test_llmcompressor_candidates_compare_cleanly(variant, scheme):
    """No critical finding on a correct candidate: the culprit's cause is the format's own noise."""
    from layerbisect.pipeline import CompareOptions, compare
    from layerbisect.producers.quantize import quantize_checkpoint

    src = _real(variant)
    cand = quantize_checkpoint(src["hf"], scheme)
    report = compare(src["gguf"], cand, options=CompareOptions(prompt=PROMPT, generate=0))
    critical = [f.title for f in report.findings if f.severity == "critical"]
    assert not critical, critical
    top = next(f for f in report.findings if f.kind == "culprit")
    assert top.evidence["cause"] == "quantization_noise"
    faults = report.record.audits.weight_faults
    assert not faults, faults[:3]
    if variant == "moe":  # routing compared in every MoE layer; flips are allowed (noise), not a collapse
        routing = report.comparison.routing
        assert [r.layer for r in routing] == list(range(6))
        assert min(r.mean_overlap for r in routing) > 0.5
    assert not math.isnan(report.record.runtime.timings_s["compare"])


def test_hf_capture_map_reaches_the_same_activations(small, tmp_path):
    """transformers captured through ``maps/hf_gemma4.toml`` gives our activations under our names."""
    from layerbisect.candidates.runner import CandidateRunner
    from layerbisect.engines import capture_activations, load_dump

    variant, model, path = small
    with torch.no_grad(), capture_activations(model, tmp_path / "dump", token_ids=IDS) as cap:
        model(torch.tensor([IDS]))
    assert cap.problems == []
    dump = load_dump(tmp_path / "dump")
    ours = CandidateRunner(path).activate().run(IDS)
    from layerbisect.capture import op_of

    unreachable = {op_of(n) for n in ours.names() if n not in dump.tensors}
    assert unreachable <= {"attn.q", "attn.k", "per_layer.inputs", "mlp_residual", "ple_residual"}, unreachable
    extra = {n for n in dump.names() if n not in ours.tensors}
    assert all(n.endswith(".mlp.out") for n in extra) and (variant == "moe") == (not extra), extra
    for n in dump.names():
        if n in ours.tensors:
            torch.testing.assert_close(dump[n], ours[n], rtol=1e-4, atol=1e-4, msg=n)


def test_spec_from_gguf_metadata_as_llamacpp_writes_it():
    """Metadata and tensor names as llama.cpp's converter writes them for the ple and moe variants (no weights)."""
    from layerbisect.families import spec_from_gguf

    a = "gemma4"
    base = {"general.architecture": a, f"{a}.block_count": 6, f"{a}.embedding_length": 64,
            f"{a}.attention.head_count": 4, f"{a}.rope.freq_base": 1e6, f"{a}.rope.freq_base_swa": 1e4,
            f"{a}.attention.layer_norm_rms_epsilon": 1e-6, f"{a}.attention.key_length": 32,
            f"{a}.attention.key_length_swa": 16, f"{a}.final_logit_softcapping": 30.0,
            f"{a}.attention.sliding_window": 8, f"{a}.rope.dimension_count": 32,
            f"{a}.rope.dimension_count_swa": 16}
    ple = {**base, f"{a}.feed_forward_length": [128] * 4 + [256] * 2, f"{a}.attention.head_count_kv": 2,
           f"{a}.attention.shared_kv_layers": 2, f"{a}.embedding_length_per_layer_input": 16,
           f"{a}.attention.sliding_window_pattern": [True, True, True, False, True, False]}
    tensors = ["rope_freqs.weight", "per_layer_token_embd.weight"] + [
        f"blk.{i}.{t}.weight" for i in range(4) for t in ("attn_k", "attn_v")] + [
        f"blk.{i}.layer_output_scale.weight" for i in range(6)]
    s = spec_from_gguf(ple, tensors, 262144, path="ple.gguf")
    assert [ls.mixer.kv_source for ls in s.layers] == [None] * 4 + [2, 3]  # llama.cpp: n_kv - 2 (swa) / - 1
    assert [ls.mixer.head_dim for ls in s.layers] == [16, 16, 16, 32, 16, 32]
    assert [ls.mixer.rope.freq_factors for ls in s.layers] == [False, False, False, True, False, True]
    assert [ls.ffn.d_ff for ls in s.layers] == [128] * 4 + [256] * 2
    assert s.per_layer_input == 16 and all(ls.out_scale for ls in s.layers) and s.hf_norm_offset == 0.0
    assert not any(ls.mixer.k_eq_v for ls in s.layers)
    moe = {**base, f"{a}.feed_forward_length": 64, f"{a}.attention.head_count_kv": [2] * 5 + [1],
           f"{a}.expert_count": 8, f"{a}.expert_used_count": 2, f"{a}.expert_feed_forward_length": 32,
           f"{a}.attention.sliding_window_pattern": [True] * 5 + [False]}
    tensors = ["rope_freqs.weight"] + [f"blk.{i}.{t}.weight" for i in range(6) for t in ("attn_k", "ffn_gate_inp")]
    tensors += [f"blk.{i}.attn_v.weight" for i in range(5)]  # the global layer has none: attention_k_eq_v
    s = spec_from_gguf(moe, tensors, 262144, path="moe.gguf")
    assert [ls.mixer.k_eq_v for ls in s.layers] == [False] * 5 + [True]
    assert {ls.ffn.kind for ls in s.layers} == {"dense+moe"} and s.layers[0].ffn.d_ff_expert == 32
    assert not any(ls.out_scale for ls in s.layers)  # no layer_output_scale tensors: no scalar (llama.cpp: optional)
