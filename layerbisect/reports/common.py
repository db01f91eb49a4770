"""Helpers shared by the renderers: number formatting, the run's facts as rows, the per-layer table.

Every renderer (terminal, Markdown, HTML, JUnit) shows the same facts in the same order:
verdict, findings, gate, per-layer table, logits, saturation, continuations, sections, run.
The facts are picked here once, from the typed ``RunRecord``, so the outputs cannot drift
apart and no Python repr of a container ever reaches a reader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from layerbisect.comparison.record import Continuations
from layerbisect.comparison.sections import Cell, Column

if TYPE_CHECKING:
    from layerbisect.comparison.report import Report

SEVERITY_LABEL = {"critical": "CRITICAL", "error": "ERROR", "warning": "WARNING", "info": "INFO"}
OTHER_OUTPUTS = "report.html (interactive plots, every table in full), report.json and points.parquet"


def fmt(x: Any, digits: int = 4) -> str:
    """Numbers for humans: 0.99871, 1.23e+04, nan, inf; ints as-is; None as '-'."""
    if x is None or x is Ellipsis:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits - 1}e}"
        if 0.99 <= abs(x) < 1:
            # cosines near 1 differ in their nines: keep two digits after the leading nines
            nines = int(-math.log10(1 - abs(x)))
            return f"{x:.{min(nines + 2, 10)}g}"
        return f"{x:.{digits + 1}g}" if abs(x) < 1 else f"{x:.{digits}g}"
    return str(x)


def fmt_bytes(n: Any) -> str:
    try:
        v = float(n)
    except (TypeError, ValueError):
        return str(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.1f} {unit}" if unit != "B" else f"{int(v)} B"
        v /= 1024
    return str(n)


def fmt_cell(v: Cell, col: Column) -> str:
    """A section cell by its column's kind."""
    if v is None:
        return "-"
    if col.kind in ("name", "text"):
        return str(v)
    return fmt(v)


def title(report: Report) -> str:
    r = report.record
    if r.title:
        return r.title
    if r.paths is not None:
        return f"layerbisect report: {_short(r.paths.candidate)} vs {_short(r.paths.reference)}"
    return "layerbisect report"


def _short(path: str) -> str:
    p = path.rstrip("/")
    return p.rsplit("/", 1)[-1] or p


def clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def run_rows(report: Report, *, full: bool = True) -> list[tuple[str, str]]:
    """What was run, as (label, value) rows. ``full=False`` shortens the token list (report.md)."""
    r, cmp = report.record, report.comparison
    rows: list[tuple[str, str]] = []
    for k, v in r.labels:
        rows.append((k, v))
    if r.paths is not None:
        rows.append(("reference", r.paths.reference))
        rows.append((f"candidate ({r.paths.candidate_kind})", r.paths.candidate))
    m = r.model
    if m is not None:
        sizes = ", ".join(f"{label} {v}" for label, v in (("layers", m.n_layers), ("d_model", m.d_model),
                                                          ("vocab", m.vocab_size)) if v is not None)  # fmt: skip
        rows.append(("model", f"{m.arch}" + (f" ({m.family})" if m.family and m.family != m.arch else "")
                     + f": {sizes}"))  # fmt: skip
        if m.attention:
            rows.append(("attention", m.attention))
        if m.ffn:
            rows.append(("FFN", m.ffn))
        if len(m.layer_kinds) > 1:
            rows.append(("layer kinds", ", ".join(f"{k.kind} ×{k.layers}" for k in m.layer_kinds)))
    else:
        rows.append(("model", f"{cmp.info.arch}: layers {cmp.info.n_layers}"))
    if cmp.info.final_softcap:
        rows.append(("final softcap", fmt(cmp.info.final_softcap)))
    if cmp.info.attn_softcap:
        rows.append(("attention softcap", fmt(cmp.info.attn_softcap)))
    q = r.quantization
    if q is not None:
        rows.append(("quantization", f"{q.format} ({q.source}); linears: {q.schemes_text()}"))
        if q.kv_cache:
            rows.append(("KV cache", q.kv_cache))
    t = r.tokens
    if t is not None:
        if t.prompt is not None:
            rows.append(("prompt", t.prompt))
        limit = None if full else 24
        ids = [str(i) for i in t.ids]
        strings = list(t.strings)
        more = "" if limit is None or len(ids) <= limit else f" … ({len(ids)} in all)"
        rows.append(("token ids", " ".join(ids[:limit]) + more))
        rows.append(("tokens", " | ".join(strings[:limit]) + more))
        rows.append(("prompt tokens", f"{t.n_prompt} of {len(t.ids)} (the rest: the reference's greedy continuation)"))
    rows.append(("positions compared", f"{len(cmp.positions)} of {max(len(cmp.ref_token_ids), len(cmp.positions))}"))
    if r.audits is not None and r.audits.cause:
        rows.append(("cause category", r.audits.cause))
    rows += runtime_rows(report)
    return rows


def runtime_rows(report: Report) -> list[tuple[str, str]]:
    rt = report.record.runtime
    if rt is None:
        return []
    rows = []
    if rt.timings_s:
        rows.append(("time", ", ".join(f"{k.replace('_', ' ')} {v:.2f} s" for k, v in rt.timings_s.items())))
    if rt.peak_memory_bytes:
        rows.append(("peak memory", ", ".join(f"{k} {fmt_bytes(v)}" for k, v in rt.peak_memory_bytes.items())))
    for m in rt.memory:
        size = m.weight_bytes if m.weight_bytes is not None else m.peak_live_weight_bytes
        what = f"{m.mode}" + (f", weights {fmt_bytes(size)}" if size is not None else "")
        if m.mode == "stream" and m.peak_live_weight_bytes is not None:
            what = f"stream, peak live weights {fmt_bytes(m.peak_live_weight_bytes)}"
        rows.append((f"{m.side} memory", what + (f" ({m.why})" if m.why else "")))
    rows.append(("passes", "both sides at once" if rt.concurrent else "one side after the other"))
    return rows


def continuations(report: Report) -> Continuations | None:
    """The greedy continuations, or None when nothing was generated (``--generate 0``, an engine dump)."""
    c = report.record.continuations
    return c if c is not None and (c.reference.ids or c.candidate.ids) else None


def verdict(report: Report) -> str:
    """One line: counts by severity."""
    counts: dict[str, int] = {}
    for f in report.findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    if not counts:
        return "no findings"
    return ", ".join(f"{n} {s}" for s, n in ((s, counts.get(s, 0)) for s in SEVERITY_LABEL) if n)


# (key in Comparison.layer_table(), short header for 80 columns, long header for HTML)
LAYER_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("layer", "layer", "layer"),
    ("residual_min_cosine", "cos min", "residual cosine (min over tokens)"),
    ("residual_max_norm_ratio", "norm ratio", "norm ratio ‖cand‖/‖ref‖ (max)"),
    ("residual_max_rel_l2", "rel err", "relative error (max)"),
    ("worst_op", "worst op", "worst op"),
    ("worst_op_min_cosine", "op cos", "worst op cosine"),
    ("cand_nonfinite", "NaN/Inf", "non-finite (candidate)"),
)


def layer_rows(report: Report) -> list[list[str]]:
    lt = report.comparison.layer_table()
    rows = []
    for rec in lt.to_dict(orient="records"):
        rows.append([fmt(rec[k]) if k != "layer" else str(rec[k]) for k, _, _ in LAYER_COLUMNS])
    return rows


def finding_evidence_text(evidence: Mapping[str, Any], limit: int = 6) -> str:
    """Scalar evidence as key=value (short lists inline); nested records stay in report.json."""
    parts = []
    for k in sorted(evidence):
        v = evidence[k]
        if isinstance(v, (list, tuple)):
            if not all(isinstance(x, (int, float, str)) for x in v):
                continue
            v = "[" + ", ".join(fmt(x) for x in list(v)[:6]) + (", …" if len(v) > 6 else "") + "]"
        elif isinstance(v, Mapping) or (v is not None and not isinstance(v, (int, float, str, bool))):
            continue
        else:
            v = fmt(v)
        parts.append(f"{k}={v}")
        if len(parts) >= limit:
            break
    return " ".join(parts)
