"""The CI gate: thresholds per point pattern (TOML), an optional baseline, pass/fail + exit code.

Design notes
- Thresholds come from a ``[default]`` section and ordered ``[[rule]]`` sections with a glob
  ``pattern`` (fnmatch, as for capture selection); every matching rule overrides the keys
  it sets, later rules win. ``false`` disables a check. Format: docs/GATE.md.
- The gate re-judges the comparison's result objects under the per-point thresholds
  (``PointResult.under``); it computes nothing new, so the gate and the report agree.
- Findings can fail the gate too: by default any ``critical`` finding (NaN onset, tokenizer
  mismatch, final-logit saturation) fails, whatever the thresholds say.
- A baseline is a previous report.json: the gate fails when a point's min cosine dropped by
  more than ``max_cosine_drop`` (a regression gate for a quantization recipe).
- Exit codes: 0 pass, 1 gate failed; bad input (TOML, baseline JSON) raises ``InputError``,
  which the CLI turns into 2.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerbisect.comparison.findings import SEVERITIES
from layerbisect.comparison.results import Thresholds
from layerbisect.errors import InputError

try:
    import tomllib
except ImportError:  # Python 3.10: the same parser, packaged as tomli
    import tomli as tomllib  # type: ignore[no-redef]

if TYPE_CHECKING:
    from layerbisect.comparison.report import Report

EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2

_INT_KEYS = {"max_nonfinite"}
# what each threshold can mean (a cosine is in [-1, 1], shares in [0, 1]); the rest are ≥ 0
_RANGES = {"min_cosine": (-1.0, 1.0), "min_top1": (0.0, 1.0), "min_top5": (0.0, 1.0), "max_saturation": (0.0, 1.0)}


@dataclass(frozen=True)
class Rule:
    pattern: str
    overrides: Mapping[str, float | int | None]
    origin: str = ""  # where a user's rule came from ("gate.toml [[rule]] #2"); "" for the built-in ones


@dataclass
class GateConfig:
    default: Thresholds = field(default_factory=Thresholds)
    rules: list[Rule] = field(default_factory=list)
    max_cosine_drop: float = 0.002  # baseline tolerance on each point's min cosine
    fail_on: tuple[str, ...] = ("critical",)  # finding severities that fail the gate
    source: str = "<built-in>"

    def comparison_thresholds(self) -> Thresholds:
        """The one ``Thresholds`` the comparison's own verdicts use (``compare_captures``): the default with the
        logit keys (max_kl, min_top1, min_top5) of the rules matching ``logits``, so the logit finding says
        what this gate says."""
        lg = self.thresholds_for("logits")
        return self.default.updated(max_kl=lg.max_kl, min_top1=lg.min_top1, min_top5=lg.min_top5)

    def thresholds_for(self, point: str) -> Thresholds:
        t = self.default
        for rule in self.rules:
            if fnmatch.fnmatchcase(point, rule.pattern):
                t = t.updated(**rule.overrides)
        return t

    @classmethod
    def builtin(cls) -> GateConfig:
        """Defaults that catch the bugs we have seen (docs/GATE.md explains each number).

        Sub-op points (a post-norm, one projection) of a healthy FP8 model dip to a per-token
        cosine of ~0.985 on Gemma 3 270M, so they get 0.97; the residual stream after each
        layer (``layers.N.out``; ``?`` patterns because ``*`` would also match
        ``layers.3.attn.out``) and the logits are held to the tighter bounds.
        """
        residual = {"min_cosine": 0.99, "max_rel_l2": 0.2}
        return cls(
            default=Thresholds(min_cosine=0.97, max_rel_l2=0.35),
            rules=[
                *cls._base_rules(),
                Rule("layers.?.out", residual),
                Rule("layers.??.out", residual),
                Rule("layers.???.out", residual),
            ],
        )

    @classmethod
    def builtin_for(cls, report: Report) -> GateConfig:
        """The built-in gate for this run: derived from its expected lane when it has one (``from_noise``)."""
        summary = getattr(getattr(report, "record", None), "noise", None)
        return cls.from_noise(summary) if summary is not None and summary.points else cls.builtin()

    @classmethod
    def from_noise(cls, summary: Any) -> GateConfig:
        """Thresholds from the expected lane (``comparison/noise.py``): each point may be MARGIN× worse than the
        reference's own weights in the candidate's format (+ SLACK), the logits likewise; the norm ratio
        follows the relative error (|ratio − 1| ≤ rel err); any non-finite value and any critical finding
        still fail."""
        from layerbisect.comparison.noise import gate_thresholds

        per_point, logits = gate_thresholds(summary)
        base = cls.builtin()
        rules = [Rule(pat, {**o, **logits}) if pat == "logits*" else r
                 for r in base.rules for pat, o in [(r.pattern, dict(r.overrides))]]
        for point, t in per_point.items():
            if any(ch in point for ch in "*?["):
                continue  # capture names never hold glob characters; refuse to guess if one does
            rules.append(Rule(point, {**t, "max_norm_ratio": max(1.5, 1.0 + t["max_rel_l2"])}))
        return cls(default=base.default, rules=rules, max_cosine_drop=base.max_cosine_drop, fail_on=base.fail_on,
                   source=f"<built-in, from the expected lane: {summary.scheme}>")

    @staticmethod
    def _base_rules() -> list[Rule]:
        return [Rule("logits*", {"max_kl": 0.1, "min_top1": 0.9})]

    @classmethod
    def from_toml(cls, path: str | Path) -> GateConfig:
        from layerbisect.validation import read_text

        p = Path(path)
        if not p.exists() and not p.is_symlink():
            raise InputError(p, "gate config not found")
        return cls.from_toml_text(read_text(p, "gate config", max_bytes=1 << 20), where=str(p))

    @classmethod
    def from_toml_text(cls, text: str, where: str = "<gate toml>") -> GateConfig:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InputError(where, f"invalid TOML: {e}") from None
        known = {"default", "rule", "baseline", "gate"}
        extra = sorted(set(data) - known)
        if extra:
            raise InputError(where, f"unknown section(s) {extra}; expected {sorted(known)}")
        # A TOML config starts from the plain Thresholds defaults plus the logits rule, so its
        # [default] section is not silently overridden by built-in per-pattern rules.
        base = cls(rules=cls._base_rules())
        default = base.default.updated(**_thresholds(data.get("default", {}), f"{where} [default]"))
        rules = list(base.rules)
        raw_rules = data.get("rule", [])
        if not isinstance(raw_rules, list):
            raise InputError(where, "[[rule]] must be an array of tables")
        for k, r in enumerate(raw_rules):
            w = f"{where} [[rule]] #{k + 1}"
            if not isinstance(r, dict) or not isinstance(r.get("pattern"), str) or not r["pattern"]:
                raise InputError(w, "each rule needs a non-empty string 'pattern'")
            rest = {key: v for key, v in r.items() if key != "pattern"}
            rules.append(Rule(r["pattern"], _thresholds(rest, w), origin=w))
        drop = base.max_cosine_drop
        bl = data.get("baseline", {})
        if not isinstance(bl, dict) or set(bl) - {"max_cosine_drop"}:
            raise InputError(f"{where} [baseline]", "only 'max_cosine_drop' is allowed")
        if "max_cosine_drop" in bl:
            drop = _number(bl["max_cosine_drop"], f"{where} [baseline] max_cosine_drop")
        fail_on = base.fail_on
        g = data.get("gate", {})
        if not isinstance(g, dict) or set(g) - {"fail_on"}:
            raise InputError(f"{where} [gate]", "only 'fail_on' is allowed")
        if "fail_on" in g:
            fo = g["fail_on"]
            if not isinstance(fo, list) or any(s not in SEVERITIES for s in fo):
                raise InputError(f"{where} [gate] fail_on", f"must be a list of {list(SEVERITIES)}")
            fail_on = tuple(fo)
        return cls(default=default, rules=rules, max_cosine_drop=drop, fail_on=fail_on, source=where)


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        raise InputError(where, f"expected a number, got {v!r}")
    return float(v)


def _thresholds(section: Any, where: str) -> dict[str, float | int | None]:
    if not isinstance(section, dict):
        raise InputError(where, "must be a table")
    names = set(Thresholds.names())
    out: dict[str, float | int | None] = {}
    for k, v in section.items():
        if k not in names:
            raise InputError(where, f"unknown key {k!r}; known: {sorted(names)}")
        if v is False:
            out[k] = None  # `false` disables the check
            continue
        x = _number(v, f"{where} {k}")
        lo, hi = _RANGES.get(k, (0.0, math.inf))
        if not lo <= x <= hi:  # a bound no run can meet (or every run meets) is a typo, not a gate
            raise InputError(f"{where} {k}", f"{x:g} is outside [{lo:g}, {hi:g}]")
        out[k] = int(x) if k in _INT_KEYS else x
    return out


@dataclass
class GateResult:
    passed: bool
    failures: list[str]
    notes: list[str] = field(default_factory=list)
    checked: int = 0

    @property
    def exit_code(self) -> int:
        return EXIT_PASS if self.passed else EXIT_FAIL

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.passed:
            return f"gate PASSED ({self.checked} checks)"
        lines = [f"gate FAILED ({len(self.failures)} of {self.checked} checks)"]
        lines += [f"  - {f}" for f in self.failures]
        return "\n".join(lines)


def load_baseline(path: str | Path) -> dict[str, float]:
    """point → min cosine from a previous report.json."""
    from layerbisect.comparison.report import load_report_json

    return _baseline_points(load_report_json(path), str(path))


def _baseline_points(data: Mapping[str, Any], where: str) -> dict[str, float]:
    from layerbisect.comparison.report import unjson_float

    points = data.get("points")
    if not isinstance(points, Mapping):
        raise InputError(where, "baseline has no 'points' table")
    out: dict[str, float] = {}
    for name, p in points.items():
        if not isinstance(p, Mapping) or "min_cosine" not in p:
            raise InputError(where, f"baseline point {name!r} has no 'min_cosine'")
        try:
            out[str(name)] = unjson_float(p["min_cosine"])
        except (TypeError, ValueError):
            raise InputError(where, f"baseline point {name!r}: bad min_cosine {p['min_cosine']!r}") from None
    return out


def evaluate(
    report: Report,
    config: GateConfig | None = None,
    baseline: str | Path | Mapping[str, Any] | None = None,
    baseline_where: str | Path | None = None,
) -> GateResult:
    """Judge a report: per-point thresholds, logits, saturation, findings, and the baseline.

    Without ``config``: the built-in gate, derived from the run's expected lane when it has one. A baseline
    that shares no compared point with this report is an ``InputError`` (it would pass vacuously).
    """
    config = config or GateConfig.builtin_for(report)
    cmp = report.comparison
    failures: list[str] = []
    notes: list[str] = []
    checked = 0

    for name, r in cmp.points.items():
        checked += 1
        fails = r.under(config.thresholds_for(name)).failures()
        if fails:
            # worst_token is the lowest cosine's: name it only when that is among the failures
            cos = r.worst_token is not None and any(f.startswith("min cosine") for f in fails)
            where = f"{name} (token {r.worst_token})" if cos else name
            failures.append(f"{where}: {'; '.join(fails)}")
    if cmp.logits is not None:
        checked += 1
        fails = cmp.logits.under(config.thresholds_for("logits")).failures()
        if fails:
            failures.append(f"logits: {'; '.join(fails)}")
    for s in cmp.saturation:
        checked += 1
        fails = s.under(config.thresholds_for(s.point)).failures()
        if fails:
            failures.append(f"{s.point} ({s.kind} softcap): {'; '.join(fails)}")
    for f in report.findings:
        if f.severity in config.fail_on:
            checked += 1
            failures.append(f"finding [{f.severity}] {f.kind}: {f.title}")

    judged = [*cmp.points, *(["logits"] if cmp.logits is not None else []), *(s.point for s in cmp.saturation)]
    for rule in config.rules:  # a user's pattern that matches nothing is most likely a typo: say so
        if rule.origin and not any(fnmatch.fnmatchcase(n, rule.pattern) for n in judged):
            notes.append(f"{rule.origin}: pattern {rule.pattern!r} matches no compared point")

    if baseline is not None:
        where = str(baseline_where or (baseline if not isinstance(baseline, Mapping) else "<baseline>"))
        if isinstance(baseline, Mapping):
            base = _baseline_points(baseline, where)
        else:
            base = load_baseline(baseline)
        if base and not set(base) & set(cmp.points):
            raise InputError(where, "has no compared point in common with this run; nothing to gate against")
        for name, before in base.items():
            r = cmp.points.get(name)
            if r is None:
                notes.append(f"{name}: in the baseline but not compared now")
                continue
            checked += 1
            now = r.min_cosine
            if math.isnan(now) and not math.isnan(before):
                failures.append(f"{name}: min cosine is NaN now, baseline {before:.6g}")
            elif not math.isnan(before) and before - now > config.max_cosine_drop:
                failures.append(
                    f"{name}: min cosine {now:.6g} dropped {before - now:.3g} vs baseline {before:.6g} "
                    f"(> max_cosine_drop {config.max_cosine_drop:g})"
                )
    return GateResult(passed=not failures, failures=failures, notes=notes, checked=checked)
