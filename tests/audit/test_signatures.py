"""Fault signatures (audit/signatures.py): each names its cause on a planted tensor and stays silent on noise."""

from __future__ import annotations

import math

import pytest
import torch

from layerbisect.audit import signatures as sg
from layerbisect.families.base import qk_permutation

HEADS, D = 4, 8


def _w(rows: int = HEADS * D, cols: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def _halves() -> torch.Tensor:
    return torch.cat([(torch.arange(D) + D // 2) % D + h * D for h in range(HEADS)])


def _heads_reversed() -> torch.Tensor:
    return torch.cat([torch.arange(D) + h * D for h in reversed(range(HEADS))])


@pytest.mark.parametrize(
    "perm, expect",
    [
        (_halves(), "halves swapped within each head"),
        (_heads_reversed(), "heads reordered [3, 2, 1, 0]"),
        (qk_permutation(HEADS, D), "interleaved vs NEOX rope order (llama.cpp's Q/K permute applied)"),
        (torch.argsort(qk_permutation(HEADS, D)), "interleaved vs NEOX rope order (llama.cpp's Q/K permute inverted)"),
    ],
    ids=["halves", "heads", "rope-permute", "rope-unpermute"],
)
def test_permutation_structure_is_named(perm: torch.Tensor, expect: str) -> None:
    ref = _w()
    cand = ref[perm] + 1e-3 * _w(seed=1)  # a little quantization-like noise
    sig = sg.permutation(ref, cand, heads_out=HEADS)
    assert sig is not None and sig.cause == "layout_permutation"
    assert expect in sig.evidence["structure"], sig.note
    assert sig.evidence["axis"] == "rows" and sig.evidence["restored_cosine"] > 0.999


def test_column_permutation_and_general_shuffle() -> None:
    ref = _w()
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    sig = sg.permutation(ref, ref[:, perm])
    assert sig is not None and sig.evidence["axis"] == "columns"
    assert sig.evidence["structure"].startswith("rows reordered (")  # columns seen as rows of the transpose
    assert sg.describe_permutation(torch.tensor([1, 0, 2, 3])) == "rows reordered (2 of 4 moved)"


def test_no_permutation_on_noise_or_garbage() -> None:
    ref = _w()
    assert sg.permutation(ref, ref + 0.05 * _w(seed=2), heads_out=HEADS) is None  # identity: nothing to name
    assert sg.permutation(ref, _w(seed=9), heads_out=HEADS) is None  # unrelated weights match no layout


@pytest.mark.parametrize("offset, words", [(1.0, "applied twice"), (-1.0, "not applied")])
def test_norm_plus_minus_one(offset: float, words: str) -> None:
    ref = 0.3 * _w(1, 64).flatten()
    sig = sg.norm_convention(ref, ref + offset)
    assert sig is not None and sig.cause == "norm_convention" and words in sig.note
    assert sig.evidence["offset"] == pytest.approx(offset, abs=1e-6)


def test_norm_folded_scale_names_s() -> None:
    ref = 0.3 * _w(1, 64).flatten()
    sig = sg.norm_convention(ref, 1 + (ref - 1) / 2.0)  # 1 + w/s written where (1 + w)/s was meant
    assert sig is not None and sig.evidence["s"] == pytest.approx(2.0, rel=1e-6)
    assert sg.norm_convention(ref, ref * 1.001) is None  # a plain rescale is not a convention fault


def test_embed_scale() -> None:
    d = 640
    assert sg.embed_scale(1 / math.sqrt(d), math.sqrt(d)).cause == "embed_scale"
    assert "applied twice" in sg.embed_scale(math.sqrt(d), math.sqrt(d)).note
    assert sg.embed_scale(1.0, math.sqrt(d)) is None
    assert sg.embed_scale(0.5, 1.0) is None  # a model without an embedding scale


def test_sibling_scale_predicts_alpha() -> None:
    sibs = {"layers.1.mlp.gate_proj": 300.0}
    assert sg.sibling_scale(1.5, 200.0, sibs, "divide") is None  # NVFP4 divisor: α = g_own / g_sib = 2/3, not 1.5
    sig = sg.sibling_scale(200.0 / 300.0, 200.0, sibs, "divide")
    assert sig is not None and sig.cause == "shard_scale_mismatch"
    assert sig.evidence["predicted_alpha"] == pytest.approx(2 / 3)
    assert sg.sibling_scale(1.5, 0.002, {"q": 0.003}, "multiply").evidence["sibling"] == "q"
