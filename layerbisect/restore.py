"""Which tensors to keep at the reference's precision: restore them one at a time and measure the KL they recover.

Design notes
- The question a llama.cpp user asks after a per-layer diff is "which tensors should I keep
  at higher precision, and what does it buy?". Weight error alone does not answer it: a
  tensor's KL cost depends on where it sits (an early ``ffn_down``, the embedding), so we
  measure it. *Restoring* a unit swaps its candidate modules for the reference's (the same
  swap as ``--bisect``: ``bisect_modules.bisect_units``; for a GGUF candidate a unit is one
  tensor of the file, experts of a stacked tensor and a tied head included), one teacher-
  forced pass over the same ids, logits only, scored with llama.cpp's mean KLD
  (``comparison/kld.py``). Restoring a GGUF tensor is exactly what ``llama-quantize
  --allow-requantize --tensor-type PATTERN=<reference type>`` writes: an override equal to
  the tensor's current type copies its bytes (llama-quant.cpp), so the prediction can be
  checked against a real llama.cpp file (``producers/gguf_quants.quantized_gguf``).
- What is measured (each a set of passes; K0 = mean KLD with nothing restored):
    * ``types``: each candidate GGML type restored alone (which type costs the most KL);
    * ``layers``: each layer's tensors restored alone (which layer costs the most);
    * ``roles``: greedy over tensor roles (``ffn_down`` in every layer, …, the unit of
      llama-quantize's ``--tensor-type ffn_down=…``): at each step the role whose restoration,
      on top of those already restored, lowers the KL the most;
    * ``tensors``: every tensor restored alone (its single-restore gain), then a greedy path:
      at each step, among the ``pool`` remaining tensors with the largest single gains, the
      one that lowers the KL the most on top of the path so far. Re-evaluating only a pool
      keeps the cost at N + steps·pool passes instead of N·steps; KL contributions of
      different tensors are nearly additive at these error levels, and the pool catches the
      interactions among the strong ones. The path's recovered share (1 − K/K0) and the bytes
      it adds (reference minus candidate tensor sizes) are what a user trades.
- Pure bookkeeping (``greedy``) is separate from the passes (``Scorer``), so it can be tested
  on a synthetic additive cost.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .graph import get_module, set_module


@dataclass(frozen=True)
class UnitInfo:
    name: str  # canonical module (or stacked-expert pattern, or "embed")
    tensor: str  # GGUF tensor name ("" for a checkpoint candidate)
    layer: int | None
    role: str  # ffn_down, attn_q, token_embd, … (checkpoint: the canonical op)
    cand_type: str
    ref_type: str
    cand_bytes: float
    ref_bytes: float

    @property
    def added_bytes(self) -> float:
        return self.ref_bytes - self.cand_bytes


@dataclass
class Score:
    mean_kld: float
    same_top_p: float


@dataclass
class RestoreResult:
    """Everything the search measured; rows are plain dicts for the report."""

    n_positions: int
    baseline: Score
    units: list[UnitInfo]
    types: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    roles: list[dict[str, Any]] = field(default_factory=list)
    single: list[dict[str, Any]] = field(default_factory=list)
    path: list[dict[str, Any]] = field(default_factory=list)
    passes: int = 0

    def keep(self, share: float = 0.5) -> list[dict[str, Any]]:
        """The shortest prefix of the greedy path recovering at least ``share`` of the KL (else the whole path)."""
        for k, row in enumerate(self.path):
            if row["recovered"] >= share:
                return self.path[: k + 1]
        return list(self.path)

    def tensor_type_args(self, rows: Sequence[dict[str, Any]]) -> list[str]:
        """llama-quantize ``--tensor-type`` arguments that keep ``rows``' tensors at the reference's type."""
        info = {u.name: u for u in self.units}
        out = []
        for r in rows:
            u = info[r["unit"]]
            if u.tensor:
                out.append(f"--tensor-type '{re.escape(u.tensor.removesuffix('.weight'))}={u.ref_type.lower()}'")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_positions": self.n_positions, "baseline": vars(self.baseline), "passes": self.passes,
            "units": [vars(u) | {"added_bytes": u.added_bytes} for u in self.units], "types": self.types,
            "layers": self.layers, "roles": self.roles, "single": self.single, "path": self.path,
        }


# ---------------------------------------------------------------------------------------------------------------
# pure: the greedy path over a cost function
# ---------------------------------------------------------------------------------------------------------------


def greedy(items: Sequence[str], cost: Callable[[frozenset[str]], float], steps: int, *,
           pool: int | None = None, prior: dict[str, float] | None = None) -> list[tuple[str, float]]:
    """Greedy minimization: at each step add the item that gives the lowest ``cost(restored set)``.

    ``pool``: only the ``pool`` remaining items with the lowest ``prior`` (e.g. single-restore
    cost) are tried per step (all when None). Returns [(item, cost after adding it)], at most
    ``steps`` long; stops early when nothing is left.
    """
    chosen: list[tuple[str, float]] = []
    done: set[str] = set()
    for _ in range(min(steps, len(items))):
        left = [x for x in items if x not in done]
        if prior is not None and pool is not None:
            left = sorted(left, key=lambda x: prior[x])[:pool]
        best = min(left, key=lambda x: (cost(frozenset(done | {x})), items.index(x)))
        done.add(best)
        chosen.append((best, cost(frozenset(done))))
    return chosen


# ---------------------------------------------------------------------------------------------------------------
# passes
# ---------------------------------------------------------------------------------------------------------------


class Scorer:
    """Mean KLD of the candidate with a set of units restored (memoized; modules swapped back after each pass)."""

    def __init__(self, ref_runner: Any, cand_runner: Any, ids: Sequence[int], units: dict[str, list[str]]):
        from .comparison.kld import per_position

        self.cand, self.ids, self.units = cand_runner, list(ids), units
        self.n = len(self.ids) - 1
        ref_logits = ref_runner.run(self.ids, select=["logits"]).tensors["logits"][: self.n]
        self._per_position = per_position
        self._ref = ref_logits
        mods = [m for ms in units.values() for m in ms]
        self.quant = {m: get_module(cand_runner.model, m) for m in mods}
        self.dense = {m: get_module(ref_runner.model, m) for m in mods}
        self.cache: dict[frozenset[str], Score] = {}
        self.passes = 0

    def __call__(self, restored: frozenset[str]) -> Score:
        if restored in self.cache:
            return self.cache[restored]
        for name in restored:
            for m in self.units[name]:
                set_module(self.cand.model, m, self.dense[m])
        try:
            logits = self.cand.run(self.ids, select=["logits"]).tensors["logits"][: self.n]
        finally:
            for name in restored:
                for m in self.units[name]:
                    set_module(self.cand.model, m, self.quant[m])
        pp = self._per_position(self._ref, logits, self.ids[1 : self.n + 1])
        s = Score(float(pp["kld"].mean()), float(pp["same_top"].double().mean()))
        self.passes += 1
        self.cache[restored] = s
        return s


def unit_infos(ref_runner: Any, cand_runner: Any, names: Sequence[str]) -> list[UnitInfo]:
    own = getattr(cand_runner, "restore_units", None)
    gg = own() if callable(own) else {}
    ref_types = _types(ref_runner)
    ref_file = getattr(ref_runner, "gguf", None)
    out = []
    for n in names:
        u = gg.get(n)
        if u is not None:
            rt = ref_file.tensors.get(u.tensor) if ref_file is not None else None
            out.append(UnitInfo(n, u.tensor, u.layer, u.role, u.scheme.weight,
                                rt.tensor_type.name if rt is not None else "?",
                                float(u.nbytes), float(rt.n_bytes) if rt is not None else math.nan))
            continue
        parts = n.split(".")
        layer = int(parts[1]) if parts[0] == "layers" else None
        lin = cand_runner.quant_linears().get(n)
        scheme = getattr(getattr(lin, "scheme", None), "weight", "?")
        out.append(UnitInfo(n, "", layer, ".".join(parts[2:]) if layer is not None else n, scheme,
                            ref_types.get(f"{n}.weight", "?"), math.nan, math.nan))
    return out


def _types(runner: Any) -> dict[str, str]:
    fn = getattr(runner, "tensor_types", None)
    return fn() if callable(fn) else {}


def _row(what: str, key: str, units: Sequence[UnitInfo], s: Score, base: Score, **extra: Any) -> dict[str, Any]:
    rec = 1.0 - s.mean_kld / base.mean_kld if base.mean_kld > 0 else math.nan
    return {what: key, **extra, "tensors": len(units), "added_bytes": sum(u.added_bytes for u in units),
            "mean_kld": s.mean_kld, "recovered": rec, "same_top_p": s.same_top_p}


def restore_search(
    ref_runner: Any,
    cand_runner: Any,
    ids: Sequence[int],
    *,
    steps: int = 8,
    pool: int = 8,
    status: Callable[[str], None] | None = None,
) -> RestoreResult:
    """Measure the KL each candidate type, layer, role and tensor costs (see the module notes).

    Both runners activated and resident; the candidate's modules are restored afterwards.
    """
    from .bisect_modules import bisect_units

    say = status or (lambda s: None)
    units = bisect_units(ref_runner, cand_runner)
    scorer = Scorer(ref_runner, cand_runner, ids, units)
    infos = unit_infos(ref_runner, cand_runner, list(units))
    by_name = {u.name: u for u in infos}
    base = scorer(frozenset())
    res = RestoreResult(scorer.n, base, infos)
    if not units or base.mean_kld <= 0:
        res.passes = scorer.passes
        return res

    def group(key: Callable[[UnitInfo], Any]) -> dict[Any, list[UnitInfo]]:
        g: dict[Any, list[UnitInfo]] = {}
        for u in infos:
            g.setdefault(key(u), []).append(u)
        return g

    say("restore search: per type")
    for t, us in group(lambda u: u.cand_type).items():
        s = scorer(frozenset(u.name for u in us))
        res.types.append(_row("cand_type", t, us, s, base, ref_types=", ".join(sorted({u.ref_type for u in us}))))
    res.types.sort(key=lambda r: r["mean_kld"])
    say("restore search: per layer")
    for layer, us in sorted(group(lambda u: -1 if u.layer is None else u.layer).items()):
        s = scorer(frozenset(u.name for u in us))
        types = ", ".join(sorted({u.cand_type for u in us}))
        res.layers.append(_row("layer", "non-layer" if layer < 0 else str(layer), us, s, base, types=types))
    say("restore search: greedy over roles")
    roles = group(lambda u: u.role)
    role_names = list(roles)
    for role, _ in greedy(role_names, lambda rs: scorer(frozenset(u.name for r in rs for u in roles[r])).mean_kld,
                          len(role_names)):
        done = [r["role"] for r in res.roles] + [role]
        us = [u for r in done for u in roles[r]]
        s = scorer(frozenset(u.name for u in us))
        res.roles.append(_row("role", role, us, s, base, types=", ".join(sorted({u.cand_type for u in roles[role]}))))
    say(f"restore search: {len(infos)} tensors one at a time")
    single = {u.name: scorer(frozenset({u.name})) for u in infos}
    for u in sorted(infos, key=lambda u: single[u.name].mean_kld):
        res.single.append(_row("unit", u.name, [u], single[u.name], base, tensor=u.tensor,
                               type=f"{u.cand_type} (ref {u.ref_type})"))
    say(f"restore search: greedy path, {steps} steps over pools of {pool}")
    names = [u.name for u in infos]
    for name, _ in greedy(names, lambda rs: scorer(rs).mean_kld, steps, pool=pool,
                          prior={n: single[n].mean_kld for n in names}):
        done_names = [r["unit"] for r in res.path] + [name]
        s = scorer(frozenset(done_names))
        u = by_name[name]
        res.path.append(_row("unit", name, [by_name[n] for n in done_names], s, base, tensor=u.tensor,
                             type=f"{u.cand_type} (ref {u.ref_type})", alone=single[name].mean_kld))
    res.passes = scorer.passes
    return res


def restore_report(report: Any, ref: Any, cand: Any, opts: Any = None, *, steps: int = 8, pool: int = 8,
                   status: Callable[[str], None] | None = None) -> RestoreResult:
    """Re-open both runners (resident), run ``restore_search`` on the report's ids, add its sections and finding."""
    from .api import open_runner, resolve_tokens
    from .pipeline import CompareOptions

    o = opts or CompareOptions()
    ref_runner = open_runner(ref, device=o.ref_device or o.device)
    cand_runner = open_runner(cand, device=o.cand_device or o.device, options=o.quant_options,
                              kv_cache=o.kv_cache, role="candidate")
    ref_runner.stream = cand_runner.stream = False
    ref_runner.activate()
    cand_runner.activate()
    ids = list(report.record.tokens.ids) if report.record.tokens is not None else []
    ids = ids or resolve_tokens(ref_runner, o.prompt, o.tokens)
    res = restore_search(ref_runner, cand_runner, ids, steps=steps, pool=pool, status=status)
    add_sections(report, res)
    return res


def _mib(b: float) -> str:
    return "-" if b != b else f"{b / 2**20:+.3f} MiB"


def sections(res: RestoreResult) -> tuple[Any, ...]:
    """The restore search's tables (every output renders them; report.json carries every row)."""
    from .comparison.sections import Section

    base = res.baseline
    note = (f"mean KLD (llama.cpp's definition, {res.n_positions} positions) with the units restored to the "
            f"reference's tensors; nothing restored: {base.mean_kld:.6g} (same top p {100 * base.same_top_p:.2f}%). "
            "recovered = share of that KLD recovered; added_mib = reference minus candidate tensor sizes.")

    def rows(rs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "added_bytes"} | {"added_mib": r["added_bytes"] / 2**20}
                for r in rs]

    return (
        Section.from_records("restore-types", "Restore search: each candidate type restored alone",
                             rows(res.types), brief_rows=len(res.types), note=note),
        Section.from_records("restore-layers", "Restore search: each layer restored alone", rows(res.layers),
                             brief_rows=len(res.layers), note=note),
        Section.from_records("restore-roles", "Restore search: greedy over tensor roles (cumulative)",
                             rows(res.roles), brief_rows=len(res.roles), note=note),
        Section.from_records("restore-path", "Restore search: greedy over tensors (cumulative; 'alone' = that "
                             "tensor restored alone)", rows(res.path), brief_rows=len(res.path), note=note),
        Section.from_records("restore-single", "Restore search: every tensor restored alone (best first)",
                             rows(res.single), brief_rows=12, note=note),
    )


def add_sections(report: Any, res: RestoreResult) -> None:
    from .comparison.findings import Finding

    for sec in sections(res):
        report.add_section(sec)
    base = res.baseline
    keep = res.keep(0.5)
    if keep:
        last = keep[-1]
        args = " ".join(res.tensor_type_args(keep))
        report.add_finding(Finding(
            severity="info",
            kind="restore_search",
            title=f"Keep {len(keep)} tensor(s) at the reference's type to recover {100 * last['recovered']:.0f}% of "
                  f"the KL ({base.mean_kld:.4g} → {last['mean_kld']:.4g}, {_mib(last['added_bytes'])})",
            detail="Greedy restore path: " + ", ".join(f"{r['tensor'] or r['unit']} {r['type']}" for r in keep)
            + (f". llama-quantize --allow-requantize {args} REF.gguf OUT.gguf TYPE writes exactly these bits."
               if args else ""),
            evidence={"path": keep, "baseline": vars(base), "passes": res.passes},
        ))


__all__ = ["RestoreResult", "Scorer", "UnitInfo", "greedy", "restore_report", "restore_search", "sections"]
