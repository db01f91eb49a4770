"""Noise-aware verdicts: the candidate's error against what its own format is expected to cost.

Design notes
- A fixed gate asks "is this error small?"; the right question is "is it larger than this
  format's own noise?". NVFP4 W4A4 on Gemma 3 270M legitimately loses 2 % of residual cosine
  and 0.3 nats of logit KL; FP8 with a weight scale ×8 on one down projection loses almost
  nothing at the residual (a post-FFN norm absorbs it) but its ``mlp.down`` output is 8× off.
  The *expected lane* (``layerbisect/expected/``) answers per point: the reference's own
  weights quantized with the candidate's scheme by the producer's rounding, run through the
  same candidate emulation. Its error against the reference is what the format costs here.
- Verdict (pure, ``beyond_noise``): a point is a fault when the candidate's error exceeds the
  expected one by a margin, ``cand > MARGIN · expected + SLACK``. Errors are relative L2
  (worst token), the measure that adds up through the residual stream; a non-finite
  candidate value is always a fault. MARGIN and SLACK come from the clean real checkpoints
  (docs/FAULTS.md, "Noise margins"): two producer runs of the same scheme differ by their
  rounding realizations and static-scale calibration texts, so the candidate's clean error
  is 0.5–2× the expected lane's; planted faults sit at 5× and far beyond.
- The built-in gate derives its thresholds from the expected errors (``gate_thresholds``):
  per point ``max_rel_l2 = MARGIN·e + SLACK`` and ``min_cosine = 1 − MARGIN²·(1 − c)`` (for
  small errors 1 − cos ≈ rel²/2, so the squared margin keeps the two checks consistent),
  logits ``max_kl = MARGIN²·KL_e + 0.02`` and ``min_top1 = top1_e − 0.25``; a ``--gate`` TOML
  still overrides everything.
- Everything here is a typed, frozen result (``NoiseSummary``) that the run record carries
  and every output renders as sections: candidate vs expected per layer, and the points
  beyond noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from layerbisect.comparison.sections import Section

MARGIN = 3.0  # the candidate may be up to 3x worse than the expected lane before a point is a fault
SLACK = 0.02  # absolute relative-L2 slack: points whose expected error is ~0 (norm inputs, embeddings)
TOP1_SLACK = 0.25  # top-1 agreement may drop this far below the expected lane's
KL_SLACK = 0.02  # nats


def limit(expected_rel: float) -> float:
    """The largest candidate relative error a point with this expected error may have."""
    e = expected_rel if math.isfinite(expected_rel) else 0.0
    return MARGIN * e + SLACK


def beyond_noise(cand_rel: float, expected_rel: float) -> bool:
    """True when the candidate's error is more than the format's noise explains (NaN/Inf always are)."""
    if not math.isfinite(cand_rel):
        return True
    return cand_rel > limit(expected_rel)


def excess(cand_rel: float, expected_rel: float) -> float:
    """cand / limit(expected): > 1 is beyond noise; inf for non-finite candidates."""
    if not math.isfinite(cand_rel):
        return math.inf
    return cand_rel / limit(expected_rel)


# --------------------------------------------------------------------------- typed results


@dataclass(frozen=True)
class PointNoise:
    """One capture point: the candidate's and the expected lane's worst-token error vs the reference."""

    point: str
    layer: int | None
    op: str
    cand_rel_l2: float
    expected_rel_l2: float
    cand_min_cosine: float
    expected_min_cosine: float
    excess: float  # cand / limit(expected)
    beyond: bool


@dataclass(frozen=True)
class LayerNoise:
    """One layer: local (on the reference's input) and accumulated error, candidate vs expected."""

    layer: int
    cand_local_rel_l2: float
    expected_local_rel_l2: float
    cand_acc_rel_l2: float
    expected_acc_rel_l2: float
    local_excess: float
    first_op_beyond: str  # first op in execution order whose local error is beyond noise ("" if none)
    verdict: str  # "fault" / "amplified" / "noise"


@dataclass(frozen=True)
class OpNoise:
    """One op of one layer under activation patching (local errors)."""

    layer: int
    op: str
    cand_rel_l2: float
    expected_rel_l2: float
    beyond: bool


@dataclass(frozen=True)
class ModuleNoise:
    """One quantized linear on the reference's input: candidate vs expected-lane linear."""

    module: str
    layer: int | None
    cand_rel_l2: float
    expected_rel_l2: float
    beyond: bool


@dataclass(frozen=True)
class NoiseSummary:
    """The expected lane's verdicts for a run (see module notes)."""

    scheme: str  # e.g. "nvfp4/nvfp4 ×126"
    backend: str  # who quantized the reference weights: "compressed-tensors" or "layerbisect kernels"
    margin: float = MARGIN
    slack: float = SLACK
    points: tuple[PointNoise, ...] = ()
    layers: tuple[LayerNoise, ...] = ()
    ops: tuple[OpNoise, ...] = ()
    modules: tuple[ModuleNoise, ...] = ()
    cand_mean_kl: float = math.nan
    expected_mean_kl: float = math.nan
    cand_top1: float = math.nan
    expected_top1: float = math.nan
    note: str = ""

    # -- lookups -------------------------------------------------------------------------------------------
    def point(self, name: str) -> PointNoise | None:
        return next((p for p in self.points if p.point == name), None)

    def layer(self, i: int) -> LayerNoise | None:
        return next((r for r in self.layers if r.layer == i), None)

    def module(self, name: str) -> ModuleNoise | None:
        return next((m for m in self.modules if m.module == name), None)

    @property
    def beyond_points(self) -> tuple[PointNoise, ...]:
        return tuple(p for p in self.points if p.beyond)

    @property
    def first_beyond(self) -> PointNoise | None:
        return next(iter(self.beyond_points), None)

    def first_op_beyond(self, layer: int) -> str | None:
        """The first op (execution order) of ``layer`` whose local error the format's noise does not explain."""
        return next((o.op for o in self.ops if o.layer == layer and o.beyond), None)

    # -- sections ------------------------------------------------------------------------------------------
    def sections(self) -> tuple[Section, ...]:
        out = []
        if self.layers:
            out.append(Section.from_records(
                "candidate-vs-expected",
                "Candidate vs expected error per layer (expected: the reference's weights in the candidate's format)",
                self.layers,
                labels={"cand_local_rel_l2": "cand local", "expected_local_rel_l2": "expected local",
                        "cand_acc_rel_l2": "cand acc.", "expected_acc_rel_l2": "expected acc.",
                        "local_excess": "local excess", "first_op_beyond": "first op beyond noise"},
                brief=("layer", "cand_local_rel_l2", "expected_local_rel_l2", "cand_acc_rel_l2",
                       "expected_acc_rel_l2", "verdict"),
                rank_by="local_excess",
                brief_rows=8,
                text=f"Expected lane: {self.scheme}, quantized by {self.backend}"
                + f". A point is beyond noise when its relative error exceeds {self.margin:g}× the expected one "
                f"+ {self.slack:g}. Logits: KL {self.cand_mean_kl:.4g} vs expected {self.expected_mean_kl:.4g} nats, "
                f"top-1 {self.cand_top1:.0%} vs {self.expected_top1:.0%}." + (f" {self.note}" if self.note else ""),
                note="Relative L2 error vs the reference, worst token. local: each layer run on the reference's "
                "input; acc.: the normal run. 'fault': the layer's own error is beyond the format's noise; "
                "'amplified': only its accumulated error is.",
            ))
        beyond = self.beyond_points
        if self.points:
            out.append(Section.from_records(
                "beyond-noise",
                "Points beyond the format's noise (candidate vs expected relative error)",
                beyond if beyond else self.points,
                labels={"cand_rel_l2": "cand rel err", "expected_rel_l2": "expected rel err",
                        "cand_min_cosine": "cand cos", "expected_min_cosine": "expected cos"},
                brief=("point", "cand_rel_l2", "expected_rel_l2", "excess"),
                rank_by=None,
                brief_rows=10,
                text=f"{len(beyond)} of {len(self.points)} points are beyond noise." if beyond
                else f"All {len(self.points)} points are within the format's noise.",
            ))
        return tuple(out)


# --------------------------------------------------------------------------- builders (pure)


def point_rows(cand_points: Mapping[str, Any], exp_points: Mapping[str, Any]) -> list[PointNoise]:
    """PointResults of the candidate and of the expected lane (same names) → verdict per point, execution order."""
    out = []
    for name, c in cand_points.items():
        e = exp_points.get(name)
        if e is None or not c.full:
            continue
        cr = c.max_rel_l2 if c.cand_nonfinite == 0 else math.inf
        out.append(PointNoise(name, c.layer, c.op, cr, e.max_rel_l2, c.min_cosine, e.min_cosine,
                              excess(cr, e.max_rel_l2), beyond_noise(cr, e.max_rel_l2)))
    return out


def op_rows(cand_layers: Iterable[Mapping[str, Any]], exp_layers: Iterable[Mapping[str, Any]]) -> list[OpNoise]:
    """Per-layer patching rows (``localize.patch_layers``) of both lanes → per-op local verdicts."""
    exp = {(r["layer"], o["op"]): o["rel_l2"] for r in exp_layers for o in r["ops"]}
    out = []
    for r in cand_layers:
        for o in r["ops"]:
            e = exp.get((r["layer"], o["op"]), math.nan)
            out.append(OpNoise(r["layer"], o["op"], o["rel_l2"], e, beyond_noise(o["rel_l2"], e)))
    return out


def layer_rows(cand_layers: Iterable[Mapping[str, Any]], exp_layers: Iterable[Mapping[str, Any]],
               points: Iterable[PointNoise], ops: Iterable[OpNoise]) -> list[LayerNoise]:
    exp = {r["layer"]: r for r in exp_layers}
    acc = {p.layer: p for p in points if p.point == f"layers.{p.layer}.out"}
    ops = list(ops)
    out = []
    for r in cand_layers:
        i = r["layer"]
        e = exp.get(i, {})
        el = e.get("local_rel_l2", math.nan)
        a = acc.get(i)
        first = next((o.op for o in ops if o.layer == i and o.beyond), "")
        local_beyond = beyond_noise(r["local_rel_l2"], el)
        verdict = "fault" if (local_beyond or first) else ("amplified" if a is not None and a.beyond else "noise")
        out.append(LayerNoise(
            i, r["local_rel_l2"], el, a.cand_rel_l2 if a else math.nan, a.expected_rel_l2 if a else math.nan,
            excess(r["local_rel_l2"], el), first, verdict,
        ))
    return out


def module_rows(cand_modules: Iterable[Mapping[str, Any]], exp_modules: Iterable[Mapping[str, Any]]
                ) -> list[ModuleNoise]:
    exp = {m["module"]: m["rel_l2"] for m in exp_modules}
    out = []
    for m in cand_modules:
        e = exp.get(m["module"], math.nan)
        cr = m["rel_l2"] if not m.get("nonfinite") else math.inf
        out.append(ModuleNoise(m["module"], m.get("layer"), cr, e, beyond_noise(cr, e)))
    return out


def gate_thresholds(summary: NoiseSummary) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Per-point overrides (point → {max_rel_l2, min_cosine}) and logits overrides derived from the expected lane."""
    per_point = {}
    for p in summary.points:
        e_rel = p.expected_rel_l2 if math.isfinite(p.expected_rel_l2) else 0.0
        e_cos = p.expected_min_cosine if math.isfinite(p.expected_min_cosine) else 1.0
        per_point[p.point] = {
            "max_rel_l2": limit(e_rel),
            "min_cosine": min(1.0 - MARGIN**2 * (1.0 - e_cos), 1.0 - (SLACK**2) / 2),
        }
    logits: dict[str, float] = {}
    if math.isfinite(summary.expected_mean_kl):
        logits["max_kl"] = MARGIN**2 * summary.expected_mean_kl + KL_SLACK
    if math.isfinite(summary.expected_top1):
        logits["min_top1"] = max(0.0, summary.expected_top1 - TOP1_SLACK)
    return per_point, logits


__all__ = [
    "MARGIN",
    "SLACK",
    "LayerNoise",
    "ModuleNoise",
    "NoiseSummary",
    "OpNoise",
    "PointNoise",
    "beyond_noise",
    "excess",
    "gate_thresholds",
    "layer_rows",
    "limit",
    "module_rows",
    "op_rows",
    "point_rows",
]
