"""Noise-aware verdicts (comparison/noise.py) and the gate derived from them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from layerbisect.comparison import noise
from layerbisect.comparison.gate import GateConfig


def test_beyond_noise_margin_and_nonfinite() -> None:
    assert noise.limit(0.1) == pytest.approx(noise.MARGIN * 0.1 + noise.SLACK)
    assert not noise.beyond_noise(0.3, 0.1)  # 3× the expected error: what two producer runs can differ by
    assert noise.beyond_noise(0.4, 0.1)
    assert noise.beyond_noise(math.inf, 0.1) and noise.beyond_noise(math.nan, 0.1)
    assert not noise.beyond_noise(0.015, math.nan)  # no expected value: only the absolute slack
    assert noise.excess(noise.limit(0.2), 0.2) == pytest.approx(1.0)


def _pt(rel: float, cos: float = 0.99, nonfinite: int = 0, layer: int | None = 0, op: str = "out"):
    return SimpleNamespace(max_rel_l2=rel, min_cosine=cos, cand_nonfinite=nonfinite, full=True, layer=layer, op=op)


def test_point_rows_first_beyond_in_execution_order() -> None:
    cand = {"embed": _pt(0.0, op="embed"), "layers.0.mlp.down": _pt(7.3, 0.5, op="mlp.down"),
            "layers.0.out": _pt(0.04), "layers.1.out": _pt(0.05, nonfinite=3, layer=1)}
    exp = {"embed": _pt(0.0, op="embed"), "layers.0.mlp.down": _pt(0.12, 0.99, op="mlp.down"),
           "layers.0.out": _pt(0.038), "layers.1.out": _pt(0.05, layer=1)}
    rows = noise.point_rows(cand, exp)
    assert [p.beyond for p in rows] == [False, True, False, True]  # the post-FFN norm absorbs the ×8; NaN never is
    s = noise.NoiseSummary("fp8", "compressed-tensors", points=tuple(rows))
    assert s.first_beyond.point == "layers.0.mlp.down" and len(s.beyond_points) == 2


def test_layer_verdicts_name_the_first_op_beyond_noise() -> None:
    cand = [{"layer": 0, "local_rel_l2": 0.02, "ops": [{"op": "attn.q", "rel_l2": 0.02},
                                                       {"op": "mlp.down", "rel_l2": 7.0}]},
            {"layer": 1, "local_rel_l2": 0.5, "ops": [{"op": "attn.q", "rel_l2": 0.5}]},
            {"layer": 2, "local_rel_l2": 0.03, "ops": [{"op": "attn.q", "rel_l2": 0.03}]}]
    exp = [{"layer": 0, "local_rel_l2": 0.02, "ops": [{"op": "attn.q", "rel_l2": 0.02},
                                                      {"op": "mlp.down", "rel_l2": 0.1}]},
           {"layer": 1, "local_rel_l2": 0.4, "ops": [{"op": "attn.q", "rel_l2": 0.4}]},
           {"layer": 2, "local_rel_l2": 0.03, "ops": [{"op": "attn.q", "rel_l2": 0.03}]}]
    ops = noise.op_rows(cand, exp)
    pts = [noise.PointNoise("layers.2.out", 2, "out", 0.5, 0.03, 0.9, 0.999, 5.0, True)]
    rows = {r.layer: r for r in noise.layer_rows(cand, exp, pts, ops)}
    assert rows[0].verdict == "fault" and rows[0].first_op_beyond == "mlp.down"  # local error alone hides it
    assert rows[1].verdict == "noise"  # large, but what the format costs in that layer
    assert rows[2].verdict == "amplified"


def test_gate_thresholds_follow_the_expected_lane() -> None:
    pts = (noise.PointNoise("layers.0.out", 0, "out", 0.05, 0.1, 0.99, 0.995, 0.2, False),)
    s = noise.NoiseSummary("nvfp4", "compressed-tensors", points=pts, expected_mean_kl=0.3, expected_top1=0.8)
    per_point, logits = noise.gate_thresholds(s)
    assert per_point["layers.0.out"]["max_rel_l2"] == pytest.approx(3 * 0.1 + 0.02)
    assert per_point["layers.0.out"]["min_cosine"] == pytest.approx(1 - 9 * 0.005)
    assert logits == {"max_kl": pytest.approx(9 * 0.3 + 0.02), "min_top1": pytest.approx(0.55)}
    cfg = GateConfig.from_noise(s)
    assert "expected lane" in cfg.source
    rule = next(r for r in cfg.rules if r.pattern == "layers.0.out")
    assert rule.overrides["max_rel_l2"] == pytest.approx(0.32) and rule.overrides["max_norm_ratio"] == 1.5
    lg = next(r for r in cfg.rules if r.pattern == "logits*")
    assert lg.overrides["max_kl"] == pytest.approx(2.72)
    no_lane = SimpleNamespace(record=SimpleNamespace(noise=None))
    assert GateConfig.builtin_for(no_lane).source == GateConfig.builtin().source
