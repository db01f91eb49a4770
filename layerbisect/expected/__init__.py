"""The expected lane: what the candidate's format costs on this model and prompt (see ``lane.py``).

``run_expected`` builds and runs the lane (the reference's weights in the candidate's format,
through the candidate's emulation) and compares it with the reference; ``summarize`` turns the
candidate's and the lane's errors into the noise verdicts of ``comparison/noise.py`` for the
run record; ``reconcile`` adjusts the comparison's generic findings to them (a first divergence
within the format's noise is a note, not an error) and adds the first point beyond noise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..capture import Captures
from ..comparison import noise
from ..comparison.findings import Finding
from ..heap import release_free_memory


@dataclass
class ExpectedRun:
    comparison: Any  # comparison.Comparison of the expected lane vs the reference
    layers: list[dict]  # per-layer patching rows (localize.patch_layers)
    modules: list[dict]  # per-linear rows: module, layer, rel_l2
    scheme: str
    backend: str
    seconds: float


def run_expected(ref_runner: Any, cand_runner: Any, ids: Sequence[int], ref_caps: Captures, info: Any,
                 thresholds: Any, select: str | Sequence[str] = "*") -> ExpectedRun | None:
    """Build, run and compare the expected lane; None when a side is streamed or nothing is quantized."""
    from ..comparison import compare_captures
    from .lane import build_lane, run_lane

    if getattr(ref_runner, "streaming", False) or getattr(cand_runner, "streaming", False):
        return None
    if getattr(cand_runner, "fmt", None) == "gguf":  # a GGUF candidate: its types are judged per GGML type instead
        return None
    t0 = time.perf_counter()
    from ..candidates.qlinear import release_kept_weights

    release_kept_weights(cand_runner.quant_linears().values())  # idle while the lane runs; decoded on next use
    # and the comparison's float64 copies: the lane's peak is its own memory on the live set
    release_free_memory(ref_runner.device, cand_runner.device)
    lane = build_lane(ref_runner, cand_runner, ref_caps)
    if not lane.modules:
        return None
    caps, layers, modules = run_lane(ref_runner, cand_runner, lane, ids, ref_caps, select)
    scheme, backend = lane.scheme, lane.backend
    del lane  # the expected linears (FP8 and FP32 copies of every quantized weight) go before the comparison
    release_free_memory(ref_runner.device, cand_runner.device)
    dev = ref_runner.device if torch.device(ref_runner.device).type == "cuda" else None  # reduced where the lane ran
    cmp = compare_captures(ref_caps, caps, info, thresholds=thresholds, device=dev)
    return ExpectedRun(cmp, layers, modules, scheme, backend, time.perf_counter() - t0)


def summarize(report: Any, run: ExpectedRun, localization: Any = None) -> noise.NoiseSummary:
    """The noise verdicts of this run (``NoiseSummary``) from the candidate's comparison and localization."""
    cmp, exp = report.comparison, run.comparison
    points = noise.point_rows(cmp.points, exp.points)
    ops: list[noise.OpNoise] = []
    layers: list[noise.LayerNoise] = []
    modules: list[noise.ModuleNoise] = []
    if localization is not None and localization.layers:
        cand_rows = localization.patch_rows()
        ops = noise.op_rows(cand_rows, run.layers)
        layers = noise.layer_rows(cand_rows, run.layers, points, ops)
        modules = noise.module_rows([{"module": m.module, "layer": m.layer, "rel_l2": m.rel_l2,
                                      "nonfinite": m.nonfinite} for m in localization.modules], run.modules)
    lg, el = cmp.logits, exp.logits
    return noise.NoiseSummary(
        scheme=run.scheme,
        backend=run.backend,
        points=tuple(points),
        layers=tuple(layers),
        ops=tuple(ops),
        modules=tuple(modules),
        cand_mean_kl=lg.mean_kl if lg is not None else math.nan,
        expected_mean_kl=el.mean_kl if el is not None else math.nan,
        cand_top1=lg.top1_agreement if lg is not None else math.nan,
        expected_top1=el.top1_agreement if el is not None else math.nan,
    )


def reconcile(report: Any, summary: noise.NoiseSummary) -> None:
    """Judge the generic findings against the format's noise; add the first point beyond it."""
    for f in report.findings:
        if f.kind in ("first_divergence", "norm_blowup") and f.point:
            p = summary.point(f.point)
            if p is not None and not p.beyond and f.severity in ("error", "critical"):
                f.severity = "warning"
                f.detail += (f" Within the format's noise: the reference's weights in the candidate's format give "
                             f"rel err {p.expected_rel_l2:.3g} here (candidate {p.cand_rel_l2:.3g}).")
        if f.kind == "logit_summary" and f.severity == "error":
            per_point, lim = noise.gate_thresholds(summary)
            kl_ok = not (summary.cand_mean_kl > lim.get("max_kl", math.inf))
            top_ok = not (summary.cand_top1 < lim.get("min_top1", -math.inf))
            if kl_ok and top_ok:
                f.severity = "info"
                f.detail += (f" Within the format's noise: expected KL {summary.expected_mean_kl:.4g} nats, "
                             f"top-1 {summary.expected_top1:.0%}.")
    first = summary.first_beyond
    if first is None:
        return
    report.add_finding(Finding(
        severity="error",
        kind="beyond_noise",
        title=f"First point beyond the format's noise: {first.point} (rel err {first.cand_rel_l2:.3g} vs expected "
        f"{first.expected_rel_l2:.3g})",
        point=first.point,
        layer=first.layer,
        op=first.op,
        detail=f"{len(summary.beyond_points)} of {len(summary.points)} points have an error more than "
        f"{summary.margin:g}× (+{summary.slack:g}) what the reference's own weights in the candidate's format "
        f"({summary.scheme}) give. Everything before it is what the format costs.",
        evidence={"cand_rel_l2": first.cand_rel_l2, "expected_rel_l2": first.expected_rel_l2,
                  "n_beyond": len(summary.beyond_points)},
    ))


__all__ = ["ExpectedRun", "reconcile", "run_expected", "summarize"]
