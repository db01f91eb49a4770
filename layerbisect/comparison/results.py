"""Result objects: the aggregated stats of one capture point, of the logits, of a softcap.

Polygraphy-style (comparator/compare.py): a result holds the numbers and the thresholds it
was judged against, is truthy when it passed (``__bool__``), lists what failed
(``failures()``), and its ``__str__`` says what tolerance would have been needed, so a CI
log line is a diagnosis ("min cosine 0.9312 < 0.99: would pass with min_cosine ≤ 0.9312").

A threshold set to ``None`` disables that check. NaN stats always fail a check that is
enabled: a NaN cosine means the point produced non-finite values, never a pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """Tolerances for one point (the gate builds one per point from its pattern rules)."""

    min_cosine: float | None = 0.99  # per-token cosine, worst token
    max_rel_l2: float | None = 0.2  # ‖c−r‖/‖r‖, worst token
    max_norm_ratio: float | None = 1.5  # ‖c‖/‖r‖ blow-up, worst token
    min_norm_ratio: float | None = None  # collapse; off by default
    max_nonfinite: int | None = 0  # NaN + Inf values in the candidate
    max_kl: float | None = 0.1  # mean KL(ref‖cand) in nats over positions (logits only)
    min_top1: float | None = 0.9  # share of positions with the same argmax (logits only)
    min_top5: float | None = None  # mean top-5 overlap (logits only)
    max_saturation: float | None = 0.01  # candidate share of values at the softcap wall

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def updated(self, **overrides: Any) -> Thresholds:
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fmt(x: float | int | None) -> str:
    if x is None:
        return "-"
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"


def _check_min(name: str, label: str, value: float, limit: float | None, out: list[str]) -> None:
    if limit is None:
        return
    if math.isnan(value) or value < limit:
        out.append(f"{label} {_fmt(value)} < {_fmt(limit)}: would pass with {name} ≤ {_fmt(value)}")


def _check_max(name: str, label: str, value: float, limit: float | None, out: list[str]) -> None:
    if limit is None:
        return
    if math.isnan(value) or value > limit:
        out.append(f"{label} {_fmt(value)} > {_fmt(limit)}: would pass with {name} ≥ {_fmt(value)}")


@dataclass(frozen=True)
class PointResult:
    """Token-aggregated comparison of one capture point.

    ``full`` is False when one side only had summaries (norms, NaN/Inf counts): then only
    the norm ratio and the non-finite counts are known and the other stats are NaN and
    not checked.
    """

    point: str
    order: int
    layer: int | None
    op: str
    n_tokens: int
    min_cosine: float
    mean_cosine: float
    max_rel_l2: float
    mean_rel_l2: float
    max_norm_ratio: float
    mean_norm_ratio: float
    min_norm_ratio: float
    max_abs: float
    min_sqnr_db: float
    ref_nonfinite: int
    cand_nonfinite: int
    worst_token: int | None  # token index of the lowest cosine (or highest norm ratio)
    full: bool = True
    thresholds: Thresholds = field(default_factory=Thresholds)

    def under(self, thresholds: Thresholds) -> PointResult:
        return replace(self, thresholds=thresholds)

    def failures(self) -> list[str]:
        t, out = self.thresholds, []
        if self.full:
            _check_min("min_cosine", "min cosine", self.min_cosine, t.min_cosine, out)
            _check_max("max_rel_l2", "max rel_l2", self.max_rel_l2, t.max_rel_l2, out)
        _check_max("max_norm_ratio", "max norm ratio", self.max_norm_ratio, t.max_norm_ratio, out)
        _check_min("min_norm_ratio", "min norm ratio", self.min_norm_ratio, t.min_norm_ratio, out)
        if t.max_nonfinite is not None and self.cand_nonfinite > t.max_nonfinite:
            out.append(
                f"candidate non-finite {self.cand_nonfinite} > {t.max_nonfinite}: "
                f"would pass with max_nonfinite ≥ {self.cand_nonfinite}"
            )
        return out

    def __bool__(self) -> bool:
        return not self.failures()

    def __str__(self) -> str:
        head = (
            f"{self.point}: cos min {_fmt(self.min_cosine)} rel_l2 max {_fmt(self.max_rel_l2)} "
            f"norm ratio max {_fmt(self.max_norm_ratio)} nonfinite ref/cand {self.ref_nonfinite}/{self.cand_nonfinite}"
        )
        fails = self.failures()
        return f"{head}: PASS" if not fails else f"{head}: FAIL ({'; '.join(fails)})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("thresholds")
        d["passed"] = bool(self)
        return d


@dataclass(frozen=True)
class LogitResult:
    """Distribution-level comparison of the final logits over the compared positions."""

    n_positions: int
    mean_kl: float
    max_kl: float
    worst_kl_token: int | None
    top1_agreement: float  # share of positions
    mean_top5_overlap: float
    first_top1_mismatch: int | None  # token index
    thresholds: Thresholds = field(default_factory=Thresholds)

    def under(self, thresholds: Thresholds) -> LogitResult:
        return replace(self, thresholds=thresholds)

    def failures(self) -> list[str]:
        t, out = self.thresholds, []
        _check_max("max_kl", "mean KL", self.mean_kl, t.max_kl, out)
        _check_min("min_top1", "top-1 agreement", self.top1_agreement, t.min_top1, out)
        _check_min("min_top5", "top-5 overlap", self.mean_top5_overlap, t.min_top5, out)
        return out

    def __bool__(self) -> bool:
        return not self.failures()

    def __str__(self) -> str:
        head = (
            f"logits: KL mean {_fmt(self.mean_kl)} max {_fmt(self.max_kl)} nats, "
            f"top-1 {_fmt(self.top1_agreement)}, top-5 overlap {_fmt(self.mean_top5_overlap)}"
        )
        fails = self.failures()
        return f"{head}: PASS" if not fails else f"{head}: FAIL ({'; '.join(fails)})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("thresholds")
        d["passed"] = bool(self)
        return d


@dataclass(frozen=True)
class SaturationResult:
    """How much of a softcapped tensor sits at the wall (|cap·tanh(x/cap)| ≥ 0.99·cap), both sides."""

    point: str  # the capture point the pre-softcap values came from
    kind: str  # "final" or "attention"
    layer: int | None
    cap: float
    ref_share: float  # over all compared values
    cand_share: float
    ref_max_pre: float  # largest finite |pre-softcap value|
    cand_max_pre: float
    cand_token_share: tuple[float, ...] = ()  # per compared token, candidate
    ref_token_share: tuple[float, ...] = ()
    first_saturated_token: int | None = None  # first token index where the candidate share exceeds the limit
    thresholds: Thresholds = field(default_factory=Thresholds)
    # Top softcapped values (id, value) of both sides at ``top_token`` (the first saturated token, else the
    # last one): what an engine's logit dump shows (seed 000 printed them in bf16).
    top_token: int | None = None
    ref_top: tuple[tuple[int, float], ...] = ()
    cand_top: tuple[tuple[int, float], ...] = ()

    def under(self, thresholds: Thresholds) -> SaturationResult:
        return replace(self, thresholds=thresholds)

    def failures(self) -> list[str]:
        t, out = self.thresholds, []
        if t.max_saturation is None:
            return out
        # Fires only when the candidate is at the wall *and* much more than the reference:
        # a model that legitimately saturates (both sides) is not a quantization bug.
        excess = self.cand_share > t.max_saturation and self.cand_share > 2.0 * self.ref_share + 1e-12
        if excess or math.isnan(self.cand_share):
            out.append(
                f"candidate saturation {_fmt(self.cand_share)} > {_fmt(t.max_saturation)} "
                f"(reference {_fmt(self.ref_share)}): would pass with max_saturation ≥ {_fmt(self.cand_share)}"
            )
        return out

    def __bool__(self) -> bool:
        return not self.failures()

    def __str__(self) -> str:
        head = (
            f"{self.point} ({self.kind} softcap {_fmt(self.cap)}): at wall ref {_fmt(self.ref_share)} "
            f"cand {_fmt(self.cand_share)}, max |pre| ref {_fmt(self.ref_max_pre)} cand {_fmt(self.cand_max_pre)}"
        )
        fails = self.failures()
        return f"{head}: PASS" if not fails else f"{head}: FAIL ({'; '.join(fails)})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("thresholds")
        d["cand_token_share"] = list(self.cand_token_share)
        d["ref_token_share"] = list(self.ref_token_share)
        d["passed"] = bool(self)
        return d
