"""Report sections: a typed table (or a text) that every renderer shows the same way.

Design notes
- A ``Section`` is how a diagnosis stage's table reaches the reader: the localizer's local vs
  accumulated error, the per-module error, the audits, the bisect runs, and any table added
  later (e.g. MoE routing agreement) without touching a renderer. Renderers know only
  ``Section``/``Column``; what the numbers mean stays with the stage that made them.
- Cells are scalars only (``str``, ``int``, ``float``, ``bool``, ``None``), checked on
  construction: a dict or a list in a cell would end up as its Python repr in report.md.
  Nested evidence belongs in the stage's typed result (report.json), not in a table.
- ``Section.from_records`` builds the columns from a dataclass's fields, so a field added to a
  stage's row type (an expert index, say) shows up in every output with no renderer change.
- Brief view (terminal and report.md): the columns marked ``brief`` and the first
  ``brief_rows`` rows, ranked by ``rank_by`` (largest first, NaN first: a non-finite value is
  the worst). The HTML page and report.json carry every row and column.
- ``kind="name"`` marks point / module / tensor names: renderers never truncate them (a
  name cut to "layers.…" is no name at all).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Cell = str | int | float | bool | None
ColumnKind = Literal["name", "text", "int", "float", "bool"]
NAME_KEYS = frozenset({"point", "module", "name", "tensor"})


@dataclass(frozen=True)
class Column:
    """One column: ``key`` in the row records, ``label`` for humans, ``kind`` for formatting."""

    key: str
    label: str = ""
    kind: ColumnKind = "float"
    brief: bool = True  # shown in the terminal and report.md (HTML and JSON show every column)

    @property
    def title(self) -> str:
        return self.label or self.key.replace("_", " ")


@dataclass(frozen=True)
class Section:
    """A titled table (or text) for every output; see the module notes."""

    key: str  # stable id: HTML anchor "section-<key>", JSON "key"
    title: str
    columns: tuple[Column, ...] = ()
    rows: tuple[tuple[Cell, ...], ...] = ()
    note: str = ""
    text: str = ""  # shown above the table (or alone)
    brief_rows: int = 10
    rank_by: str | None = None  # brief view: rows with the largest value of this column first

    def __post_init__(self) -> None:
        n = len(self.columns)
        for i, row in enumerate(self.rows):
            if len(row) != n:
                raise ValueError(f"section {self.key!r}: row {i} has {len(row)} cells for {n} columns")
            for c in row:
                if c is not None and not isinstance(c, (str, int, float, bool)):
                    raise TypeError(f"section {self.key!r}: row {i} has a {type(c).__name__} cell; cells are scalars")
        if self.rank_by is not None and self.rows and self.rank_by not in {c.key for c in self.columns}:
            raise ValueError(f"section {self.key!r}: rank_by {self.rank_by!r} is not a column")

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_records(
        cls,
        key: str,
        title: str,
        records: Iterable[Any],
        *,
        columns: Sequence[Column] | None = None,
        labels: Mapping[str, str] | None = None,
        brief: Iterable[str] | None = None,
        **kw: Any,
    ) -> Section:
        """Rows from dataclass instances or mappings; columns from the fields unless given.

        ``labels`` renames columns; ``brief`` names the columns shown in the brief view (default: all).
        """
        recs = [_as_mapping(r) for r in records]
        if columns is None:
            keys: list[str] = []
            types: dict[str, str] = {}
            for r, raw in zip(recs, records if isinstance(records, Sequence) else recs):
                if dataclasses.is_dataclass(raw):
                    for f in dataclasses.fields(raw):
                        types.setdefault(f.name, str(f.type))
                keys += [k for k in r if k not in keys]
            brief_set = set(brief) if brief is not None else None
            columns = [
                Column(
                    k,
                    (labels or {}).get(k, ""),
                    _kind(k, types.get(k, ""), [r.get(k) for r in recs]),
                    brief=brief_set is None or k in brief_set,
                )
                for k in keys
            ]
        cols = tuple(columns)
        rows = tuple(tuple(_cell(r.get(c.key)) for c in cols) for r in recs)
        return cls(key, title, cols, rows, **kw)

    @classmethod
    def of_text(cls, key: str, title: str, text: str, note: str = "") -> Section:
        return cls(key, title, text=text, note=note)

    # -- views --------------------------------------------------------------------------------------------------

    def records(self) -> list[dict[str, Cell]]:
        return [{c.key: v for c, v in zip(self.columns, r)} for r in self.rows]

    def column(self, key: str) -> list[Cell]:
        i = [c.key for c in self.columns].index(key)
        return [r[i] for r in self.rows]

    def brief(self) -> tuple[tuple[Column, ...], list[tuple[Cell, ...]]]:
        """(brief columns, the first ``brief_rows`` rows in rank order) for the terminal and report.md."""
        idx = [i for i, c in enumerate(self.columns) if c.brief]
        rows = list(self.rows)
        if self.rank_by is not None and rows:
            k = [c.key for c in self.columns].index(self.rank_by)
            rows.sort(key=lambda r: -_badness(r[k]))
        rows = rows[: max(self.brief_rows, 0)]
        return tuple(self.columns[i] for i in idx), [tuple(r[i] for i in idx) for r in rows]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "note": self.note,
            "text": self.text,
            "columns": [dataclasses.asdict(c) for c in self.columns],
            "rows": self.records(),
        }


def _as_mapping(r: Any) -> Mapping[str, Any]:
    if dataclasses.is_dataclass(r) and not isinstance(r, type):
        return {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
    if isinstance(r, Mapping):
        return r
    raise TypeError(f"a section row must be a dataclass or a mapping, not {type(r).__name__}")


def _cell(v: Any) -> Cell:
    """Scalars pass; numpy/torch scalars become Python numbers; tuples (shapes) become "2x3"."""
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, tuple) and all(isinstance(x, int) for x in v):
        return "x".join(str(x) for x in v)
    item = getattr(v, "item", None)
    if callable(item):
        return _cell(item())
    raise TypeError(f"{type(v).__name__} is not a table cell (cells are str, int, float, bool or None)")


def _kind(key: str, annotation: str, values: Sequence[Any]) -> ColumnKind:
    if key in NAME_KEYS:
        return "name"
    ann = annotation.replace(" ", "")
    for t, kind in (("bool", "bool"), ("int", "int"), ("float", "float"), ("str", "text")):
        if ann == t or ann.startswith(t + "|") or ann.endswith("|" + t):
            return kind  # type: ignore[return-value]
    seen = [v for v in values if v is not None]
    if seen and all(isinstance(v, bool) for v in seen):
        return "bool"
    if seen and all(isinstance(v, int) and not isinstance(v, bool) for v in seen):
        return "int"
    if seen and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
        return "float"
    return "text"


def _badness(v: Cell) -> float:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return math.inf if math.isnan(v) else float(v)
    return -math.inf


__all__ = ["Cell", "Column", "Section"]
