"""Qwen3.5 dense and MoE (Gated DeltaNet + gated attention): ours vs transformers, through prompt and decode.

Tiny models from transformers' own config classes with llama.cpp's real qwen35 vocabulary
(``producers/tiny.py: make_tiny_qwen35``), converted by llama.cpp's ``convert_hf_to_gguf.py
--no-mtp`` (which reorders the value heads: 2 key heads, 4 value heads). transformers runs the
HF model with its PyTorch fallback of the delta rule (chunked prefill, recurrent decode); our
reference runs the GGUF, our candidate runner the HF directory. Decoding is compared step by
step through the KV cache and the recurrent state on both sides.

Runtime (2 busy cores, warm fixture cache): ~40 s for the module, most of it transformers'
fallback kernels and the 151k-row embedding.
"""

from __future__ import annotations

import re

import pytest
import torch

from layerbisect.candidates.runner import CandidateRunner
from layerbisect.graph import KVCache
from layerbisect.references.runner import ReferenceRunner

transformers = pytest.importorskip("transformers")
pytest.importorskip("layerbisect.producers.llamacpp", reason="needs llama.cpp's converter (producers/llamacpp.py)")

PROMPT = [785, 6722, 315, 9625, 374] + list(range(1000, 1015))  # "The capital of France is" + 15 ids
N_DECODE = 8
MIN_COSINE = 0.9999  # FP32 vs FP32: agreement far above the floor (measured ≥ 0.99999999)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.fixture(scope="module", params=["dense", "moe"])
def qwen35(request):
    from layerbisect.producers.llamacpp import converted_gguf
    from layerbisect.producers.tiny import cached_tiny_qwen35

    hf = cached_tiny_qwen35(request.param, dtype="float32")
    gguf = converted_gguf(hf, outtype="f32", extra_args=("--no-mtp",))
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    return request.param, hf, gguf, model, ReferenceRunner(gguf).activate(), CandidateRunner(hf).activate()


@torch.no_grad()
def _hf_prompt_and_decode(model, ids: list[int], n: int):
    """transformers: logits over the prompt, then n greedy steps one token at a time through its cache."""
    out = model(torch.tensor([ids]), use_cache=True, output_router_logits=True)
    steps, router = [out.logits[0]], [out.router_logits] if getattr(out, "router_logits", None) else []
    past, new = out.past_key_values, []
    for _ in range(n):
        nxt = int(steps[-1][-1].argmax())
        new.append(nxt)
        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        steps.append(out.logits[0])
    return steps, new, router


@torch.no_grad()
def _ours_prompt_and_decode(runner: ReferenceRunner, ids: list[int], n: int):
    m, cache = runner.model, KVCache()
    steps, new = [m(torch.tensor(ids), 0, cache)], []
    for _ in range(n):
        nxt = int(steps[-1][-1].argmax())
        new.append(nxt)
        steps.append(m(torch.tensor([nxt]), cache.length, cache))
    return steps, new, cache


def test_spec_has_both_mixers(qwen35):
    kind, _, _, _, ref, _ = qwen35
    kinds = [ls.mixer.kind for ls in ref.config.layers]
    assert kinds == ["gated_deltanet", "gated_deltanet", "attention"] * 2
    attn = ref.config.layers[2].mixer
    assert attn.output_gate and attn.qk_norm and attn.rope.dim == 8  # partial rotary 0.25 of head_dim 32
    dn = ref.config.layers[0].mixer
    assert (dn.n_k_heads, dn.n_v_heads, dn.head_k_dim, dn.conv_kernel) == (2, 4, 32, 4)
    assert {ls.ffn.kind for ls in ref.config.layers} == {"moe" if kind == "moe" else "dense"}


def test_reference_matches_transformers_over_prompt_and_decode(qwen35):
    kind, _, _, model, ref, _ = qwen35
    theirs, their_new, router = _hf_prompt_and_decode(model, PROMPT, N_DECODE)
    ours, our_new, cache = _ours_prompt_and_decode(ref, PROMPT, N_DECODE)
    assert our_new == their_new, f"{kind}: greedy continuation {our_new} vs transformers {their_new}"
    for step, (o, t) in enumerate(zip(ours, theirs, strict=True)):
        cos = _cos(o, t)
        assert cos.min() >= MIN_COSINE, f"{kind} step {step}: worst position {int(cos.argmin())} cosine {cos.min()}"
        assert torch.equal(o.argmax(-1), t.argmax(-1)), f"{kind} step {step}: top-1 differs"
    # the recurrent layers carried their state through decoding; attention layers their KV cache
    dn_layers = [ls.index for ls in ref.config.layers if ls.mixer.kind == "gated_deltanet"]
    assert sorted(cache.state) == dn_layers and sorted(cache.k) == [2, 5]
    assert cache.k[2].shape[0] == len(PROMPT) + N_DECODE
    if kind == "moe":  # same routed experts at every MoE layer and prompt token
        caps = ref.run(PROMPT, select="layers.*.mlp.route")
        k = ref.config.layers[0].ffn.router.top_k
        for i, logits in enumerate(router[0]):
            theirs_ids = torch.topk(torch.softmax(logits.float(), -1), k, -1).indices.sort(-1).values
            ours_ids = caps[f"layers.{i}.mlp.route"].long().sort(-1).values
            assert torch.equal(theirs_ids, ours_ids), f"layer {i}: routing differs"


def test_decode_through_the_cache_equals_the_whole_sequence(qwen35):
    """Our decode (state + KV cache carried) and one whole-sequence pass agree: the state is continued, not reset."""
    _, _, _, _, ref, _ = qwen35
    steps, new, _ = _ours_prompt_and_decode(ref, PROMPT, 4)
    whole = ref.run(PROMPT + new, select=["logits", "layers.0.attn.state"])
    stepped = torch.cat([s[-1:] for s in steps[1:]])
    assert torch.allclose(stepped, whole["logits"][len(PROMPT):len(PROMPT) + 4], atol=1e-4, rtol=1e-4)
    norms = whole["layers.0.attn.state"]  # (T, Hv): the state's norm after each token
    assert norms.shape == (len(PROMPT) + 4, 4) and bool((norms > 0).all())


def test_gguf_reference_and_hf_candidate_agree_everywhere(qwen35):
    kind, _, _, _, ref, cand = qwen35
    rc = ref.run(PROMPT)
    cc = cand.run(PROMPT)
    assert (cand.load_notes["missing"], cand.load_notes["unused"]) == ([], [])
    assert rc.names() == cc.names()
    worst = min((float(_cos(rc[n], cc[n]).min()), n) for n in rc.names() if not n.endswith(".route"))
    assert worst[0] >= MIN_COSINE, f"{kind}: {worst[1]} cosine {worst[0]:.6f}"


def test_patching_a_recurrent_layer_starts_from_a_zero_state(qwen35):
    """localize.patch_layers runs each layer alone on the reference's input: the recurrent layers must start
    from zeros as in the whole-sequence pass, so an identical candidate has no local error."""
    from layerbisect.localize import patch_layers

    _, _, _, _, ref, cand = qwen35
    caps = ref.run(PROMPT)
    rows = patch_layers(caps, cand, len(PROMPT))
    assert [r["layer"] for r in rows] == list(range(6))
    assert all(r["local_rel_l2"] < 1e-5 for r in rows), [(r["layer"], r["local_rel_l2"]) for r in rows]


def test_value_head_order_is_undone_on_the_gguf_side():
    """llama.cpp's tiled value-head order (``_reorder_v_heads``) and our inverse are inverse permutations."""
    from layerbisect.families.qwen35 import tile_v_heads, untile_v_heads

    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(6 * 5, 7)  # 2 key heads × 3 value heads each
    tiled = tile_v_heads(x, 0, 2, 3, 5)
    assert torch.equal(tiled[5:10], x[15:20])  # tiled head 1 = (r=0, h=1) = grouped head 1·3 + 0
    assert torch.equal(untile_v_heads(tiled, 0, 2, 3, 5), x)
    assert torch.equal(untile_v_heads(tile_v_heads(x.T, 1, 2, 3, 5), 1, 2, 3, 5), x.T)


# -- candidates written by llmcompressor ---------------------------------------------------------------------------

# Residual-stream floors from the measured tiny-model numbers (docs/QWEN35.md): dense, worst token: FP8 ≥ 0.988,
# NVFP4 ≥ 0.90. MoE: a token whose router flips takes another path (its cosine says nothing about the weights), so
# the mean over tokens and the routing overlap are checked (measured: FP8 overlap ≥ 0.95, NVFP4 0.88).
SCHEME_FLOOR = {"FP8_DYNAMIC": 0.98, "FP8_BLOCK": 0.98, "NVFP4": 0.85}
ROUTING_FLOOR = {"FP8_DYNAMIC": 0.9, "FP8_BLOCK": 0.9, "NVFP4": 0.8}


@pytest.fixture(scope="module", params=["dense", "moe"])
def qwen35_bf16(request):
    from layerbisect.producers.llamacpp import converted_gguf
    from layerbisect.producers.tiny import cached_tiny_qwen35

    hf = cached_tiny_qwen35(request.param, dtype="bfloat16")
    gguf = converted_gguf(hf, outtype="f32", extra_args=("--no-mtp",))
    return request.param, hf, ReferenceRunner(gguf).activate()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", sorted(SCHEME_FLOOR))
def test_llmcompressor_candidates_compare_cleanly(qwen35_bf16, scheme):
    """Every tensor mapped (in_proj_qkv/z/a/b and out_proj quantized; conv1d, A_log, dt_bias BF16), weights
    equal the reference's up to the format's noise (α ≈ 1), residual stream and routing close."""
    from layerbisect.audit.weights import audit_runners
    from layerbisect.comparison.routing import compare_routing, mean_overlap
    from layerbisect.producers.quantize import quantize_checkpoint

    kind, hf, ref = qwen35_bf16
    cand = CandidateRunner(quantize_checkpoint(hf, scheme)).activate()
    assert (cand.load_notes["missing"], cand.load_notes["unused"]) == ([], [])
    quantized = [n for n, lin in cand.quant_linears().items() if lin.scheme.weight != "dense"]
    assert "layers.0.attn.in_proj_qkv" in quantized and "layers.0.attn.in_proj_b" in quantized
    assert all(n.endswith("lm_head") or ".mlp.router" in n for n in set(cand.quant_linears()) - set(quantized))
    audit = audit_runners(ref, cand)
    assert audit.ok, audit.summary_text()
    lin_rows = [r for r in audit.rows if r.kind == "linear"]
    tol = 0.05 if scheme == "NVFP4" else 0.02  # NVFP4 on a 1×64 shared_expert_gate: α 0.978–1.028 measured
    off = [(r.name, r.alpha) for r in lin_rows if abs(r.alpha - 1) >= tol]
    assert not off, off
    sel = ["layers.*.out", "layers.*.mlp.route", "logits"]
    rc, cc = ref.run(PROMPT, select=sel), cand.run(PROMPT, select=sel)
    per_token = (lambda c: c.min()) if kind == "dense" else (lambda c: c.mean())
    residual = [n for n in rc.names() if re.fullmatch(r"layers\.\d+\.out", n)]
    worst = min((float(per_token(_cos(rc[n], cc[n]))), n) for n in residual)
    assert worst[0] >= SCHEME_FLOOR[scheme], f"{kind} {scheme}: {worst[1]} cosine {worst[0]:.4f}"
    if kind == "moe":
        routing, _ = compare_routing(rc, cc, list(range(len(PROMPT))), PROMPT)
        overlap = mean_overlap(routing)
        assert overlap >= ROUTING_FLOOR[scheme], f"{kind} {scheme}: mean top-k overlap {overlap:.3f}"


def test_streamed_reference_equals_resident(qwen35):
    """Layer streaming loads each layer with the GGUF transforms applied and carries the recurrent state."""
    kind, _, gguf, _, ref, _ = qwen35
    streamed = ReferenceRunner(gguf)
    streamed.stream = True
    s = streamed.run(PROMPT, select=["logits", "layers.3.attn.state"])
    assert streamed.streaming
    r = ref.run(PROMPT, select=["logits", "layers.3.attn.state"])
    for n in ("logits", "layers.3.attn.state"):
        assert torch.allclose(s[n], r[n], atol=1e-5, rtol=1e-5), (kind, n)
