"""Helpers shared by the renderers: number formatting, run metadata rows, continuations.

Every renderer (terminal, Markdown, HTML, JUnit) shows the same facts in the same order:
findings, run, per-layer table, logits, saturation, continuations, extra sections. The
facts are picked here once so the outputs cannot drift apart.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from layerbisect.comparison.report import Report

SEVERITY_LABEL = {"critical": "CRITICAL", "error": "ERROR", "warning": "WARNING", "info": "INFO"}

_KNOWN_META = (
    ("ref_model", "reference model"),
    ("cand_model", "candidate model"),
    ("ref_path", "reference path"),
    ("cand_path", "candidate path"),
    ("arch", "architecture"),
    ("prompt", "prompt"),
)
_SKIP_META = {"token_ids", "token_strings", "continuations", "timings", "peak_memory"}


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


def meta_rows(report: Report) -> list[tuple[str, str]]:
    """Run metadata as (label, value) rows: known keys first, then the rest sorted."""
    meta, cmp = report.meta, report.comparison
    rows: list[tuple[str, str]] = []
    for key, label in _KNOWN_META:
        if key in meta:
            rows.append((label, str(meta[key])))
    if "arch" not in meta:
        rows.append(("architecture", cmp.info.arch))
    rows.append(("layers", str(cmp.info.n_layers)))
    if cmp.info.final_softcap:
        rows.append(("final softcap", fmt(cmp.info.final_softcap)))
    if cmp.info.attn_softcap:
        rows.append(("attention softcap", fmt(cmp.info.attn_softcap)))
    rows.append(("positions compared", f"{len(cmp.positions)} of {max(len(cmp.ref_token_ids), len(cmp.positions))}"))
    ids = meta.get("token_ids", cmp.ref_token_ids)
    if ids:
        rows.append(("token ids", " ".join(str(i) for i in list(ids)[:64]) + (" …" if len(ids) > 64 else "")))
    ts = report.token_strings()
    if ts:
        rows.append(("tokens", " | ".join(ts[:64]) + (" …" if len(ts) > 64 else "")))
    for name, secs in _mapping(meta.get("timings")).items():
        rows.append((f"time: {name}", f"{float(secs):.2f} s" if _is_num(secs) else str(secs)))
    for name, b in _mapping(meta.get("peak_memory")).items():
        rows.append((f"peak memory: {name}", fmt_bytes(b)))
    known = {k for k, _ in _KNOWN_META} | _SKIP_META
    for key in sorted(k for k in meta if k not in known):
        rows.append((key, str(meta[key])))
    return rows


def _mapping(x: Any) -> Mapping[str, Any]:
    return x if isinstance(x, Mapping) else {}


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass
class Continuations:
    ref_text: str
    cand_text: str
    ref_ids: list[int]
    cand_ids: list[int]

    @property
    def first_difference(self) -> int | None:
        """Index of the first generated id that differs (None when identical)."""
        for i, (a, b) in enumerate(zip(self.ref_ids, self.cand_ids, strict=False)):
            if a != b:
                return i
        if len(self.ref_ids) != len(self.cand_ids):
            return min(len(self.ref_ids), len(self.cand_ids))
        return None


def continuations(report: Report) -> Continuations | None:
    c = report.meta.get("continuations")
    if not isinstance(c, Mapping):
        return None
    r, k = _mapping(c.get("ref")), _mapping(c.get("cand"))
    if not r and not k:
        return None
    return Continuations(
        ref_text=str(r.get("text", "")),
        cand_text=str(k.get("text", "")),
        ref_ids=[int(i) for i in r.get("ids", []) or []],
        cand_ids=[int(i) for i in k.get("ids", []) or []],
    )


def verdict(report: Report) -> str:
    """One line: counts by severity."""
    counts: dict[str, int] = {}
    for f in report.findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    if not counts:
        return "no findings"
    return ", ".join(f"{n} {s}" for s, n in ((s, counts.get(s, 0)) for s in SEVERITY_LABEL) if n)


LAYER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("layer", "layer"),
    ("residual_min_cosine", "residual cosine (min)"),
    ("residual_max_norm_ratio", "norm ratio (max)"),
    ("residual_max_rel_l2", "rel err (max)"),
    ("worst_op", "worst op"),
    ("worst_op_min_cosine", "worst op cosine"),
    ("cand_nonfinite", "non-finite (cand)"),
)


def layer_rows(report: Report) -> list[list[str]]:
    lt = report.comparison.layer_table()
    rows = []
    for rec in lt.to_dict(orient="records"):
        rows.append([fmt(rec[k]) if k != "layer" else str(rec[k]) for k, _ in LAYER_COLUMNS])
    return rows


def finding_evidence_text(evidence: Mapping[str, Any], limit: int = 6) -> str:
    """A compact key=value rendering of evidence for text outputs (long lists shortened)."""
    parts = []
    for k in sorted(evidence)[:limit]:
        v = evidence[k]
        if isinstance(v, (list, tuple)):
            v = "[" + ", ".join(fmt(x) for x in list(v)[:8]) + (", …" if len(v) > 8 else "") + "]"
        elif isinstance(v, Mapping):
            v = "{…}"
        else:
            v = fmt(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


def cell(x: Any) -> str:
    """A table cell from an arbitrary value (extra sections)."""
    return fmt(x) if isinstance(x, (int, float)) or x is None else str(x)
