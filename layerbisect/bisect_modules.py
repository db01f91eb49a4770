"""Automatic bisect over the candidate's quantized modules: the smallest set whose quantization fails the gate.

Design notes
- ``ModuleBisect`` is a pure state machine (Polygraphy ``debug precision`` style): ``query()``
  is the set of modules to keep quantized in the next run (every other module runs at
  reference precision), ``step(ok)`` feeds back whether that run passed the gate and returns
  ``done``, ``remaining()`` bounds the runs left. No I/O; the driver does the runs.
- Search (monotone assumption: quantizing more modules never repairs a failure):
    1. nothing quantized must pass (else the failure is not in the linears: a norm, the KV
       cache, the loader) and everything quantized must fail (else nothing to find);
    2. binary search for the shortest failing prefix ``pool[:k]`` (execution order) with the
       culprits found so far kept quantized: ``pool[k-1]`` is a culprit; ceil(log2 M) runs;
    3. if the culprits alone fail, stop: the set is minimal in this sense; otherwise search
       again in ``pool[:k-1]``. One culprit among M modules costs 2 + ceil(log2 M) runs.
- Switching a module to reference precision swaps in the reference's own FP32 linear (both
  graphs use canonical module names; the candidate's Q/K rows are already in the GGUF layout),
  so "reference precision" means the reference's weights, not our dequantization of the
  candidate's.
- The driver judges each run with the same gate as the report (thresholds per point,
  softcap saturation, critical findings of the comparison detectors), without localization.
  The built-in gate is noise-aware when the report has an expected lane
  (``GateConfig.builtin_for``): a run passes when no point is worse than the format's own
  noise allows, so the search never chases the format's noise in healthy modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InputError
from .graph import get_module, set_module


class OnDevice(torch.nn.Module):
    """A module run where its weights are, called from another device: the input goes there, the output comes back.

    The reference's FP32 linear swapped into a candidate on another GPU (``--ref-device cuda:0
    --cand-device cuda:1``) stays on its own device: no copy of its weights is made.
    """

    def __init__(self, inner: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.inner, self.device = inner, torch.device(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to(self.device)).to(x.device)


def _module_device(m: torch.nn.Module) -> torch.device | None:
    return next((t.device for t in [*m.parameters(), *m.buffers()] if t.device.type != "meta"), None)


class ModuleBisect:
    """Pure state machine; see the module notes."""

    def __init__(self, names: Sequence[str], *, check_ends: bool = True):
        if not names:
            raise InputError("bisect", "no quantized modules to bisect")
        self.names = list(names)
        self.culprits: list[str] = []
        self.runs = 0
        self.verdict = ""  # set when done: "culprits", "not_in_linears", "all_pass"
        self._pool = list(self.names)
        self._lo, self._hi = 1, len(self._pool)
        self._phase = "none" if check_ends else "search"
        self.done = False

    # -- what to run next ------------------------------------------------------------------------------------------
    def query(self) -> list[str]:
        """Modules to keep quantized in the next run (the rest at reference precision)."""
        if self.done:
            raise RuntimeError("bisect is done")
        if self._phase == "none":
            return []
        if self._phase == "all":
            return list(self.names)
        if self._phase == "check":
            return list(self.culprits)
        mid = (self._lo + self._hi) // 2
        return self._pool[:mid] + self.culprits

    def remaining(self) -> int:
        """Runs still needed if no further culprit turns up (exact for a single culprit; 0 when done)."""
        if self.done:
            return 0
        if self._phase == "check":
            return 1
        search = math.ceil(math.log2(self._hi - self._lo + 1))
        return {"none": 2, "all": 1, "search": 0}[self._phase] + search + 1

    # -- feedback --------------------------------------------------------------------------------------------------
    def step(self, ok: bool) -> bool:
        """Record whether the run of ``query()`` passed the gate; return ``done``."""
        if self.done:
            raise RuntimeError("bisect is done")
        self.runs += 1
        if self._phase == "none":
            if not ok:
                return self._finish("not_in_linears")
            self._phase = "all"
            return False
        if self._phase == "all":
            if ok:
                return self._finish("all_pass")
            self._phase = "search"
            return self._settle()
        if self._phase == "check":
            if not ok:
                return self._finish("culprits")
            self._phase = "search"
            return self._settle()
        mid = (self._lo + self._hi) // 2
        if ok:
            self._lo = mid + 1
        else:
            self._hi = mid
        return self._settle()

    def _settle(self) -> bool:
        """Search phase: when the interval closed, take the culprit and decide what comes next."""
        if self._lo < self._hi:
            return False
        k = self._lo
        self.culprits.insert(0, self._pool[k - 1])
        self._pool = self._pool[: k - 1]
        if not self._pool:
            return self._finish("culprits")
        self._lo, self._hi = 1, len(self._pool)
        self._phase = "check"
        return False

    def _finish(self, verdict: str) -> bool:
        self.verdict, self.done = verdict, True
        return True


# ---------------------------------------------------------------------------------------------------------------
# driver: real runs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class BisectResult:
    culprits: list[str]
    verdict: str
    runs: int
    n_modules: int
    before: dict[str, float]  # metrics with every module quantized
    after: dict[str, float]  # with the culprits at reference precision
    after_passed: bool | None
    history: list[dict[str, Any]] = field(default_factory=list)


def quantized_module_names(cand_runner: Any) -> list[str]:
    """Canonical names of the candidate's linears that are actually quantized, in execution order.

    A scheme says so by ``weight != "dense"`` (checkpoint schemes) and, where it has one, its
    ``quantized`` flag (a GGUF candidate's F32 tensors are not).
    """
    out = []
    for n, m in cand_runner.quant_linears().items():
        scheme = getattr(m, "scheme", None)
        if getattr(scheme, "weight", "dense") != "dense" and getattr(scheme, "quantized", True):
            out.append(n)
    return out


def metrics(report: Any) -> dict[str, float]:
    """Small summary of a comparison: min residual cosine over layers, mean logit KL, top-1 agreement."""
    cmp = report.comparison
    cos = [r.min_cosine for n, r in cmp.points.items() if n.startswith("layers.") and n.endswith(".out")]
    out = {"min_residual_cosine": min(cos) if cos else float("nan")}
    lg = cmp.logits
    if lg is not None:
        out["logit_mean_kl"] = float(lg.mean_kl)
        out["top1_agreement"] = float(lg.top1_agreement)
    return out


def bisect_runners(
    ref_runner: Any,
    cand_runner: Any,
    ids: Sequence[int],
    *,
    gate_cfg: Any = None,
    select: str | Sequence[str] = "*",
    ref_caps: Any = None,
) -> BisectResult:
    """Run the bisect on two activated runners; restores the candidate's modules afterwards."""
    from .comparison import Report, compare_captures
    from .comparison.gate import GateConfig, evaluate
    from .pipeline import model_info

    gate_cfg = gate_cfg or GateConfig.builtin()
    ref_caps = ref_caps if ref_caps is not None else ref_runner.run(ids, select=select)
    info = model_info(ref_runner)
    units = bisect_units(ref_runner, cand_runner)
    names = list(units)
    mods = [m for n in names for m in units[n]]
    quant = {m: get_module(cand_runner.model, m) for m in mods}
    dense = {m: get_module(ref_runner.model, m) for m in mods}
    for m, mod in dense.items():  # the sides may sit on two devices: a reference linear runs on its own
        dev, cdev = _module_device(mod), _module_device(quant[m])
        if dev is not None and cdev is not None and dev != cdev:
            dense[m] = OnDevice(mod, dev)
    history: list[dict[str, Any]] = []

    def run(keep: Sequence[str]) -> tuple[bool, dict[str, float]]:
        keep_set = set(keep)
        for n in names:
            for m in units[n]:
                set_module(cand_runner.model, m, quant[m] if n in keep_set else dense[m])
        caps = cand_runner.run(ids, select=select)
        rep = Report(compare_captures(ref_caps, caps, info, thresholds=gate_cfg.thresholds_for("*")))
        res = evaluate(rep, gate_cfg)
        m = metrics(rep)
        history.append({"quantized": len(keep_set), "passed": bool(res.passed), **m})
        return bool(res.passed), m

    try:
        b = ModuleBisect(names)
        before: dict[str, float] = {}
        while not b.done:
            q = b.query()
            ok, m = run(q)
            if len(q) == len(names):
                before = m
            b.step(ok)
        after: dict[str, float] = {}
        after_ok: bool | None = None
        if b.culprits:
            after_ok, after = run([n for n in names if n not in set(b.culprits)])
        if not before:
            _, before = run(names)
    finally:
        for m in mods:
            set_module(cand_runner.model, m, quant[m])
    return BisectResult(b.culprits, b.verdict, len(history), len(names), before, after, after_ok, history)


def bisect_units(ref_runner: Any, cand_runner: Any) -> dict[str, list[str]]:
    """What the bisect switches, in execution order: unit name → the candidate modules swapped together.

    A checkpoint candidate: each quantized linear alone. A GGUF candidate: each quantized
    tensor of the file (``GGUFCandidateRunner.restore_units``: the embedding, with a tied
    head, and every expert of a stacked tensor travel together), leaving out tensors whose
    weights equal the reference's (a requantization that kept the type changes nothing).
    """
    own = getattr(cand_runner, "restore_units", None)
    if not callable(own):
        return {n: [n] for n in quantized_module_names(cand_runner)}
    out = {}
    for name, u in own().items():
        same = all(torch.equal(get_module(cand_runner.model, m).weight, get_module(ref_runner.model, m).weight)
                   for m in u.modules)
        if not same:
            out[name] = list(u.modules)
    return out


def bisect_report(report: Any, ref: Any, cand: Any, opts: Any = None, gate_cfg: Any = None) -> BisectResult:
    """Re-open both runners, bisect, add a ``culprit`` finding to ``report`` and the summary to its record."""
    from .api import open_runner
    from .comparison.findings import Finding
    from .comparison.gate import GateConfig
    from .comparison.record import BisectSummary
    from .pipeline import CompareOptions

    o = opts or CompareOptions()
    gate_cfg = gate_cfg or GateConfig.builtin_for(report)
    ref_runner = open_runner(ref, device=o.ref_device or o.device).activate()
    cand_runner = open_runner(cand, device=o.cand_device or o.device, options=o.quant_options,
                              kv_cache=o.kv_cache, role="candidate").activate()
    ids = list(report.record.tokens.ids) if report.record.tokens is not None else []
    if not ids:
        from .api import resolve_tokens

        ids = resolve_tokens(ref_runner, o.prompt if not o.tokens else None, o.tokens)
    res = bisect_runners(ref_runner, cand_runner, ids, gate_cfg=gate_cfg, select=o.select)

    def fmt(m: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in m.items())

    if res.verdict == "culprits":
        label = getattr(cand_runner, "unit_label", None)
        names = ", ".join(f"{c} ({label(c)})" if callable(label) and label(c) else c for c in res.culprits)
        first = res.culprits[0].split(".")
        layer = int(first[1]) if first[0] == "layers" else None
        report.add_finding(Finding(
            severity="critical",
            kind="culprit",
            title=f"bisect: module {names} (quantized, it alone fails the gate)",
            point=res.culprits[0],
            layer=layer,
            op=".".join(first[2:]) if layer is not None else first[0],
            detail=f"{res.runs} runs over {res.n_modules} quantized modules. With every module quantized: "
            f"{fmt(res.before)}; with {names} at reference precision: {fmt(res.after)} "
            f"(gate {'passes' if res.after_passed else 'still fails: other modules fail too'}).",
            evidence={"culprits": res.culprits, "runs": res.runs, "before": res.before, "after": res.after,
                      "after_passed": res.after_passed, "source": "bisect"},
        ))
    else:
        msg = {
            "not_in_linears": "the gate fails even with every quantized linear at reference precision: the fault is "
                              "outside the linears (norms, KV cache, loader)",
            "all_pass": "with every module quantized the metrics pass the gate (what is wrong stays within it or "
                        "is absorbed downstream): nothing to bisect; the audits and the culprit finding judge "
                        "weights and scales directly",
        }[res.verdict]
        report.add_finding(Finding(
            severity="warning" if res.verdict == "not_in_linears" else "info",
            kind="bisect",
            title=f"bisect: {msg}",
            detail=f"{res.runs} runs over {res.n_modules} quantized modules; all quantized: {fmt(res.before)}.",
            evidence={"verdict": res.verdict, "runs": res.runs, "before": res.before},
        ))
    report.put(bisect=BisectSummary.from_result(res))  # the runs table reaches every output from the record
    return res


__all__ = [
    "BisectResult",
    "ModuleBisect",
    "bisect_report",
    "bisect_runners",
    "bisect_units",
    "quantized_module_names",
]
