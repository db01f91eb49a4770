"""The ``Report``: findings + comparison + the typed run record, and the files written from it.

Design notes
- One object feeds every output (terminal, Markdown, HTML, JSON, Parquet, JUnit, GitHub
  step summary); renderers live in ``layerbisect.reports`` and only read a ``Report``:
  ``comparison`` (the numbers), ``findings`` (where and why, most severe first) and
  ``record`` (a frozen ``RunRecord``: paths, model, tokens, continuations, quantization,
  runtime, localization, audits, bisect; see ``record.py``). Stages hand their typed results
  to the record with ``put``; tables reach the outputs as ``Section``s.
- ``to_json`` is deterministic: sorted keys, floats rounded to 9 significant digits, NaN
  and ±Inf written as the strings "nan"/"inf"/"-inf" (JSON has no such numbers), and no
  run-time measurement: ``record.runtime`` goes to runtime.json. The same inputs give the
  same bytes, so a report JSON can be diffed and used as a gate baseline.
- ``save`` refuses to write into a non-empty directory that is not a previous layerbisect
  report (recognised by the marker file ``.layerbisect-report``) unless ``overwrite=True``:
  ``bisect ... -o ~/`` must never scribble over a home directory. It writes into a staging
  directory and moves it into place at the end (``layerbisect/outputs.py``): an error or an
  interrupt never leaves a half-written report or a new file beside an old one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd

from layerbisect.comparison.comparator import Comparison
from layerbisect.comparison.findings import Finding, detect_all, sort_findings
from layerbisect.comparison.record import RunRecord
from layerbisect.comparison.sections import Section
from layerbisect.errors import InputError
from layerbisect.outputs import MARKER  # the marker of a report directory, re-exported

SCHEMA = 2  # 2: "run" (typed record) and "sections" (typed tables) replace "meta" and "extra_sections"
DEFAULT_FORMATS: tuple[str, ...] = ("md", "html", "json", "parquet")
FILE_NAMES = {
    "md": "report.md",
    "html": "report.html",
    "json": "report.json",
    "parquet": "points.parquet",
    "junit": "junit.xml",
}


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
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return jsonable(asdict(x))
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
    """Findings first, then the comparison, then the run record (see module notes)."""

    def __init__(
        self,
        comparison: Comparison,
        findings: Iterable[Finding] | None = None,
        record: RunRecord | None = None,
    ):
        self.comparison = comparison
        self._findings: list[Finding] = list(findings) if findings is not None else detect_all(comparison)
        self.record: RunRecord = record if record is not None else RunRecord()

    # -- content -------------------------------------------------------------

    @property
    def findings(self) -> list[Finding]:
        """Sorted: severity, then execution order (findings appended later are sorted in too)."""
        return sort_findings(self._findings, self.comparison.order)

    def add_finding(self, finding: Finding) -> None:
        self._findings.append(finding)

    def put(self, **parts: Any) -> RunRecord:
        """Put stage results into the record, e.g. ``put(localization=loc)``; returns the new record."""
        self.record = dataclasses.replace(self.record, **parts)
        return self.record

    def add_section(self, section: Section | str, data: Any = None, note: str = "") -> Section:
        """Add a table of any kind (``record.extra``): a ``Section``, or a title with rows.

        Rows: a DataFrame, dataclass instances or mappings of scalars (``Section.from_records``);
        a string is a text section.
        """
        if not isinstance(section, Section):
            key = re.sub(r"[^a-z0-9]+", "-", section.lower()).strip("-")[:48]
            if isinstance(data, str):
                section = Section.of_text(key, section, data, note)
            else:
                rows = data.to_dict(orient="records") if isinstance(data, pd.DataFrame) else list(data or [])
                section = Section.from_records(key, section, rows, note=note)
        taken = {s.key for s in self.sections}
        if section.key in taken:  # keys are HTML ids and JSON keys: unique
            n = 2
            while f"{section.key}-{n}" in taken:
                n += 1
            section = dataclasses.replace(section, key=f"{section.key}-{n}")
        self.put(extra=(*self.record.extra, section))
        return section

    @property
    def sections(self) -> tuple[Section, ...]:
        """Every table after the fixed parts: expert routing (MoE), localization, audits, bisect, then any others."""
        out: list[Section] = []
        if self.comparison.routing:
            from layerbisect.comparison.routing import summary_rows

            out.append(Section.from_records(
                "expert-routing",
                "Expert routing (reference vs candidate)",
                summary_rows(self.comparison.routing),
                rank_by=None,
                brief_rows=12,
                note="per MoE layer: mean top-k overlap |ref ∩ cand| / k over tokens, share of tokens sent to the "
                "same expert set, and the first token routed differently (routing.parquet: every layer × token).",
            ))  # fmt: skip
        return (*out, *self.record.sections())

    @property
    def df(self) -> pd.DataFrame:
        return self.comparison.df

    def worst_severity(self) -> str | None:
        f = self.findings
        return f[0].severity if f else None

    def token_strings(self) -> list[str]:
        t = self.record.tokens
        return list(t.strings) if t is not None else []

    # -- JSON ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything except run-time measurements (those are ``record.runtime``, written to runtime.json)."""
        from layerbisect.version import __version__

        cmp = self.comparison
        return {
            "layerbisect_report": SCHEMA,
            "version": __version__,
            "run": self.record.to_dict(),
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
            "sections": [s.to_dict() for s in self.sections],
        }

    def to_json(self) -> str:
        """Deterministic: the same inputs give the same bytes (see module notes)."""
        d = jsonable(self.to_dict())
        return json.dumps(d, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"

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
            if self.record.runtime is not None:
                p = stage / "runtime.json"
                p.write_text(json.dumps(jsonable(self.record.runtime.to_dict()), sort_keys=True, indent=2) + "\n")
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


__all__ = ["Report", "RunRecord", "Section", "MARKER", "load_report_json", "jsonable", "unjson_float", "write_points"]
