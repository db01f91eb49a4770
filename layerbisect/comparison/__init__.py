"""compare: align two capture stores, compute metrics, detect findings, build the report, gate CI.

Entry points: ``compare_captures`` → ``Comparison``; ``detect_all`` → findings;
``Report(comparison, record=...)`` → ``save``/``to_json``; ``gate.evaluate`` → ``GateResult``.
"""

from __future__ import annotations

from layerbisect.comparison.comparator import Comparison, ModelInfo, compare_captures
from layerbisect.comparison.findings import Finding, detect_all, sort_findings
from layerbisect.comparison.gate import GateConfig, GateResult, evaluate
from layerbisect.comparison.record import RunRecord
from layerbisect.comparison.report import Report
from layerbisect.comparison.results import LogitResult, PointResult, SaturationResult, Thresholds
from layerbisect.comparison.sections import Column, Section

__all__ = [
    "Column",
    "Comparison",
    "Finding",
    "GateConfig",
    "GateResult",
    "LogitResult",
    "ModelInfo",
    "PointResult",
    "Report",
    "RunRecord",
    "SaturationResult",
    "Section",
    "Thresholds",
    "compare_captures",
    "detect_all",
    "evaluate",
    "sort_findings",
]
