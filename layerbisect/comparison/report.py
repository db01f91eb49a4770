"""The ``Report``: findings + comparison + run metadata, and the files written from it.

Design notes
- One object feeds every output (terminal, Markdown, HTML, JSON, Parquet, JUnit, GitHub
  step summary); renderers live in ``layerbisect.reports`` and only read a ``Report``.
- ``to_json`` is deterministic: sorted keys, floats rounded to 9 significant digits, NaN
  and ±Inf written as the strings "nan"/"inf"/"-inf" (JSON has no such numbers), no
  timestamps unless the caller put them in ``meta``. The same inputs give the same bytes,
  so a report JSON can be diffed and used as a gate baseline.
- ``save`` refuses to write into a non-empty directory that is not a previous layerbisect
  report (recognised by the marker file ``.layerbisect-report``) unless ``overwrite=True``:
  ``bisect ... -o ~/`` must never scribble over a home directory. It writes into a staging
  directory and moves it into place at the end (``layerbisect/outputs.py``): an error or an
  interrupt never leaves a half-written report or a new file beside an old one.
- ``meta`` keys the renderers know (all optional): ``ref_model``, ``cand_model``,
  ``ref_path``, ``cand_path``, ``prompt``, ``token_ids``, ``token_strings``, ``arch``,
  ``continuations`` = {"ref": {"text", "ids"}, "cand": {"text", "ids"}}, ``timings``
  (name → seconds), ``peak_memory`` (name → bytes). Any other key is shown as-is.
- ``extra_sections``: others add tables (``Section(title, data, note)``; data is a
  DataFrame, a list of dicts, a dict, or a Markdown/plain string) that every output renders.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from layerbisect.comparison.comparator import Comparison
from layerbisect.comparison.findings import Finding, detect_all, sort_findings
from layerbisect.errors import InputError
from layerbisect.outputs import MARKER  # the marker of a report directory, re-exported

RUNTIME_KEY = "runtime"  # timings and peak memory: shown in reports, kept out of report.json
SCHEMA = 1
DEFAULT_FORMATS: tuple[str, ...] = ("md", "html", "json", "parquet")
FILE_NAMES = {
    "md": "report.md",
    "html": "report.html",
    "json": "report.json",
    "parquet": "points.parquet",
    "junit": "junit.xml",
}


@dataclass
class Section:
    """An extra report section added by other code (e.g. a local-vs-accumulated table)."""

    title: str
    data: Any  # pd.DataFrame | list[dict] | dict | str
    note: str = ""

    def rows(self) -> list[dict[str, Any]] | None:
        """Table rows, or None when the section is text."""
        d = self.data
        if isinstance(d, pd.DataFrame):
            return d.to_dict(orient="records")
        if isinstance(d, Mapping):
            return [{"key": k, "value": v} for k, v in d.items()]
        if isinstance(d, str):
            return None
        return [dict(r) for r in d]

    def text(self) -> str:
        return self.data if isinstance(self.data, str) else ""


def jsonable(x: Any) -> Any:
    """Make x JSON-serialisable and stable: rounded floats, non-finite floats as strings."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        r = float(f"{x:.9g}")
        return 0.0 if r == 0 else r  # no "-0.0"
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, pd.DataFrame):
        return jsonable(x.to_dict(orient="records"))
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted(jsonable(v) for v in x)
    if isinstance(x, Path):
        return str(x)
    if x is pd.NA:
        return None
    # numpy / torch scalars
    item = getattr(x, "item", None)
    if callable(item):
        return jsonable(item())
    return str(x)


def unjson_float(x: Any) -> float:
    """Inverse of ``jsonable`` for one float read back from a report JSON."""
    if isinstance(x, str):
        return float(x)
    if x is None:
        return math.nan
    return float(x)


class Report:
    """Findings first, then the comparison, then what was run (see module notes)."""

    def __init__(
        self,
        comparison: Comparison,
        findings: Iterable[Finding] | None = None,
        meta: Mapping[str, Any] | None = None,
        extra_sections: Sequence[Section | tuple[str, Any]] | None = None,
    ):
        self.comparison = comparison
        self._findings: list[Finding] = list(findings) if findings is not None else detect_all(comparison)
        self.meta: dict[str, Any] = dict(meta or {})
        self.extra_sections: list[Section] = [
            s if isinstance(s, Section) else Section(*s) for s in (extra_sections or [])
        ]
        if comparison.routing:
            from layerbisect.comparison.routing import summary_rows

            self.add_section(
                "Expert routing (reference vs candidate)",
                summary_rows(comparison.routing),
                "per MoE layer: mean top-k overlap |ref ∩ cand| / k over tokens, share of tokens sent to the same "
                "expert set, and the first token routed differently (routing.parquet: every layer × token).",
            )

    # -- content -------------------------------------------------------------

    @property
    def findings(self) -> list[Finding]:
        """Sorted: severity, then execution order (findings appended later are sorted in too)."""
        return sort_findings(self._findings, self.comparison.order)

    def add_finding(self, finding: Finding) -> None:
        self._findings.append(finding)

    def add_section(self, title: str, data: Any, note: str = "") -> Section:
        s = Section(title, data, note)
        self.extra_sections.append(s)
        return s

    @property
    def df(self) -> pd.DataFrame:
        return self.comparison.df

    def worst_severity(self) -> str | None:
        f = self.findings
        return f[0].severity if f else None

    def token_strings(self) -> list[str]:
        ts = self.meta.get("token_strings")
        return [str(t) for t in ts] if isinstance(ts, (list, tuple)) else []

    # -- JSON ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        from layerbisect.version import __version__

        cmp = self.comparison
        return {
            "layerbisect_report": SCHEMA,
            "version": __version__,
            "meta": self.meta,
            "model": asdict(cmp.info),
            "thresholds": cmp.thresholds.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "points": {name: r.to_dict() for name, r in cmp.points.items()},
            "layers": cmp.layer_table().to_dict(orient="records"),
            "logits": None
            if cmp.logits is None
            else {**cmp.logits.to_dict(), "per_position": cmp.logits_df.to_dict(orient="records")},
            "saturation": [s.to_dict() for s in cmp.saturation],
            "routing": [r.to_dict() for r in cmp.routing],
            "alignment": {
                "positions": cmp.positions,
                "token_mismatch": cmp.token_mismatch,
                "only_ref": cmp.only_ref,
                "only_cand": cmp.only_cand,
                "shape_mismatch": {k: [list(a), list(b)] for k, (a, b) in cmp.shape_mismatch.items()},
            },
            "extra_sections": [
                {"title": s.title, "note": s.note, "rows": s.rows(), "text": s.text()} for s in self.extra_sections
            ],
        }

    def to_json(self) -> str:
        """Deterministic: run-time measurements (``meta["runtime"]``) go to runtime.json instead."""
        d = self.to_dict()
        if isinstance(d.get("meta"), dict):
            d["meta"] = {k: v for k, v in d["meta"].items() if k != RUNTIME_KEY}
        return json.dumps(jsonable(d), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    # -- files ---------------------------------------------------------------

    def save(
        self,
        out_dir: str | Path,
        formats: Sequence[str] = DEFAULT_FORMATS,
        *,
        overwrite: bool = False,
        gate: Any = None,
    ) -> dict[str, Path]:
        """Write the report files; returns format → path. See module notes for the overwrite rule.

        Written whole into a staging directory beside ``out_dir`` and moved into place at the end
        (``layerbisect.outputs.StagedDir``): an error or an interrupt leaves the previous report as it was.
        """
        from layerbisect.outputs import StagedDir

        check_formats(formats, where=out_dir)
        from layerbisect.reports import html, junit, markdown

        staged = StagedDir(out_dir, overwrite=overwrite)
        names: dict[str, str] = {}
        with staged as stage:
            for fmt in formats:
                if fmt == "md":
                    p = stage / FILE_NAMES["md"]
                    p.write_text(markdown.render(self, gate), encoding="utf-8")
                elif fmt == "html":
                    p = stage / FILE_NAMES["html"]
                    p.write_text(html.render(self, gate), encoding="utf-8")
                elif fmt == "json":
                    p = stage / FILE_NAMES["json"]
                    p.write_text(self.to_json(), encoding="utf-8")
                elif fmt in ("parquet", "csv"):
                    p = write_points(self.df, stage, prefer_parquet=fmt == "parquet")
                    if not self.comparison.routing_df.empty:
                        names["routing"] = write_points(self.comparison.routing_df, stage,
                                                        prefer_parquet=fmt == "parquet", stem="routing").name
                elif fmt == "junit":
                    p = stage / FILE_NAMES["junit"]
                    p.write_text(junit.render(self, gate), encoding="utf-8")
                names[fmt] = p.name
            if RUNTIME_KEY in self.meta:
                p = stage / "runtime.json"
                p.write_text(json.dumps(jsonable(self.meta[RUNTIME_KEY]), sort_keys=True, indent=2) + "\n")
                names["runtime"] = p.name
        out = Path(out_dir)
        return {fmt: out / name for fmt, name in names.items()}


def check_formats(formats: Sequence[str], where: str | Path = "--formats") -> None:
    """Unknown or empty report format lists are an ``InputError`` (checked before any work)."""
    unknown = [f for f in formats if f not in FILE_NAMES and f != "csv"]
    if unknown:
        raise InputError(where, f"unknown report format(s) {unknown}; known: {sorted(FILE_NAMES) + ['csv']}")
    if not formats:
        raise InputError(where, f"no report format given; known: {sorted(FILE_NAMES) + ['csv']}")


def parquet_available() -> bool:
    """pyarrow is an optional extra (``layerbisect[parquet]``)."""
    return importlib.util.find_spec("pyarrow") is not None


def write_points(df: pd.DataFrame, out: Path, *, prefer_parquet: bool = True, stem: str = "points") -> Path:
    """<stem>.parquet, or <stem>.csv when pyarrow is missing (or CSV was asked for)."""
    if prefer_parquet and parquet_available():
        p = out / f"{stem}.parquet"
        df.to_parquet(p, index=False)
        return p
    p = out / f"{stem}.csv"
    df.to_csv(p, index=False)
    return p


def load_report_json(path: str | Path) -> dict[str, Any]:
    """Read a report.json (e.g. a gate baseline); bad files raise InputError."""
    from layerbisect.validation import parse_json, read_text

    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise InputError(p, "file not found")
    data = parse_json(read_text(p, "report JSON", max_bytes=1 << 30), p)
    if (
        not isinstance(data, dict)
        or data.get("layerbisect_report") is None
        or not isinstance(data.get("points"), dict)
    ):
        raise InputError(p, "not a layerbisect report JSON (missing 'layerbisect_report' or 'points')")
    return data


__all__ = ["Report", "Section", "MARKER", "load_report_json", "jsonable", "unjson_float", "write_points"]
