"""Pure pieces of the audits: scale classification, α, nibble swap, headroom findings, cause choice."""

from __future__ import annotations

import math

import pytest
import torch

from layerbisect.audit.activations import findings_from_rows
from layerbisect.audit.causes import Evidence, choose
from layerbisect.audit.weights import PairSums, best_alpha, classify_scale, cos_sim, rel_err, swap_nibbles
from layerbisect.kernels.nvfp4 import pack_fp4, unpack_fp4


@pytest.mark.parametrize(
    "alpha_of_s,conv,expect",
    [
        (lambda s: 1.0, "multiply", ""),
        (lambda s: 1.05, "divide", ""),
        (lambda s: s**2, "divide", "scale_inverted"),  # divisor used as multiplier
        (lambda s: s**-2, "divide", "scale_inverted"),  # stored as its reciprocal
        (lambda s: s**-2, "multiply", "scale_inverted"),  # FP8 multiplier used as divisor
        (lambda s: s, "multiply", "double_scale"),
        (lambda s: 1 / s, "multiply", "scale_ignored"),
        (lambda s: s, "divide", "global_scale_ignored"),
        (lambda s: 1 / s, "divide", "double_scale"),
        (lambda s: 3.0, "divide", "scale_mismatch"),
    ],
)
@pytest.mark.parametrize("s", [0.0019, 3136.0])
def test_classify_scale(alpha_of_s, conv: str, expect: str, s: float) -> None:
    cause, k = classify_scale(alpha_of_s(s), s, conv)
    assert cause == expect, (cause, k)


def test_classify_scale_refuses_to_explain_with_a_scale_near_one() -> None:
    assert classify_scale(1.5**2, 1.5, "divide")[0] == "scale_mismatch"


def test_best_alpha_and_cosine() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.randn(64, 32, generator=g)
    assert best_alpha(r, 7.5 * r) == pytest.approx(7.5)
    assert cos_sim(r, -r) == pytest.approx(-1.0)
    assert math.isnan(best_alpha(torch.zeros(3), torch.ones(3)))


def test_swap_nibbles_is_the_other_packing_order() -> None:
    codes = torch.randint(0, 16, (4, 32), dtype=torch.uint8)
    swapped = swap_nibbles(pack_fp4(codes))
    pairs = codes.reshape(4, 16, 2).flip(-1).reshape(4, 32)
    assert torch.equal(unpack_fp4(swapped), pairs)
    assert torch.equal(swap_nibbles(swapped), pack_fp4(codes))


def _row(layer: int, op: str, ratio: float) -> dict:
    order = 10 * layer + ("attn.q_proj", "mlp.up_proj").index(op)  # execution order, as headroom_rows numbers it
    return {"module": f"layers.{layer}.{op}", "layer": layer, "op": op, "scale_kind": "fp8 input_scale",
            "limit": 1.0, "input_amax": ratio, "ratio": ratio, "share_over": 0.1, "order": order}


def test_headroom_findings_thresholds() -> None:
    assert findings_from_rows([_row(0, "attn.q_proj", 1.1)], "act_scale_overflow") == []  # usual clipping
    (w,) = findings_from_rows([_row(0, "attn.q_proj", 2.0)], "act_scale_overflow")
    assert w.severity == "warning"
    rows = [_row(1, "mlp.up_proj", 900.0), _row(1, "attn.q_proj", 50.0), _row(0, "attn.q_proj", 2.0)]
    (c,) = findings_from_rows(rows, "act_scale_overflow")
    # the first critical input in execution order, not the largest ratio
    assert c.severity == "critical" and c.point == "layers.1.attn.q_proj"
    assert c.evidence["cause"] == "act_scale_overflow" and c.evidence["n_over"] == 3


def test_choose_prefers_the_culprit_layer_then_the_earliest() -> None:
    a = Evidence("scale_inverted", 3, "mlp.gate_proj", "weight_audit", "")
    b = Evidence("nibble_order", 1, "attn.q_proj", "weight_audit", "")
    n = Evidence("missing_norm", None, "final_norm", "load_notes", "")
    assert choose([a, b, n], 3) is a
    assert choose([a, b, n], 7) is b
    assert choose([n], 2) is n
    assert choose([], 0) is None
    everywhere = [Evidence("missing_norm", i, "mlp_norm", "weight_audit", "") for i in (2, 0, 1)]
    assert choose(everywhere, 1).layer == 0


def test_decisive_evidence_is_the_first_in_execution_order() -> None:
    """A critical audit/scale/non-finite finding names the culprit; the earliest such explains what follows."""
    from layerbisect.audit.causes import choose_decisive, op_point

    order = {n: i for i, n in enumerate(["embed", "layers.0.attn.q", "layers.0.mlp.down", "layers.0.out",
                                         "layers.1.attn.q", "layers.1.out", "final_norm", "logits"])}
    late = Evidence("scale_mismatch", 1, "attn.q_proj", "weight_audit", "")
    early = Evidence("scale_mismatch", 0, "mlp.down_proj", "weight_audit", "")
    patch = Evidence("scale_mismatch", 0, "attn.q_proj", "patching", "")  # not decisive by itself
    emb = Evidence("embed_scale", None, "embed", "weight_audit", "")
    assert choose_decisive([late, early, patch], order, 2) is early
    assert choose_decisive([late, early, emb], order, 2) is emb  # the embedding precedes every layer
    assert choose_decisive([patch], order, 2) is None
    assert op_point(0, "mlp.down_proj", order) == "layers.0.mlp.down"
    assert op_point(None, "lm_head", order) == "logits"
    assert op_point(1, "attn_norm", order) == "layers.1.attn.q"  # an op without a point: its layer's first
PAIR_SUMS_ATOL = 1e-6  # float32 partial sums of 1024 elements added in float64 vs whole float64 sums


@pytest.mark.parametrize("shape,blocks", [((300, 1000), 3), ((7,), 1), ((2048, 640), 1), ((1 << 22) + 5, 2)],
                         ids=["rows-in-3-blocks", "norm", "linear", "over-one-chunk"])
def test_pair_sums_match_float64_metrics(shape: tuple[int, ...], blocks: int) -> None:
    """The audit's block-wise sums (whole-vocabulary tensors are fed a block of rows at a time) give the float64
    cosine, relative error and α of the whole tensors; the candidate's non-finite values count and enter as 0."""
    g = torch.Generator().manual_seed(1)
    r = torch.randn(shape, generator=g)
    c = 1.02 * r + 0.05 * torch.randn(shape, generator=g)
    c.view(-1)[3], c.view(-1)[-1] = float("nan"), float("inf")
    ps = PairSums()
    for rb, cb in zip(r.chunk(blocks), c.chunk(blocks)):
        ps.add(rb, cb)
    bad, cos, rel, alpha, _ = ps.result()
    cz = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
    want = cos_sim(r, cz), rel_err(r, cz), best_alpha(r, cz)
    assert bad == 2
    for name, got, exp in zip(("cosine", "rel_err", "alpha"), (cos, rel, alpha), want):
        assert abs(got - exp) <= PAIR_SUMS_ATOL, f"{name}: {got!r} vs float64 {exp!r} (|diff| {abs(got - exp):.3g})"


def test_pair_sums_shape_mismatch_and_nonfinite_reference() -> None:
    ps = PairSums()
    ps.add(torch.ones(4, 3), torch.ones(3, 4))
    assert not ps.shape_ok
    ps = PairSums()
    r = torch.ones(8)
    r[2] = float("nan")
    ps.add(r, torch.ones(8))
    _, cos, _, _, _ = ps.result()
    assert math.isnan(cos)  # as cos_sim: a non-finite reference gives NaN, not a number
