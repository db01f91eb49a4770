"""Audits that explain a divergence: weights and scales (no forward pass), activation scales, causes.

See docs/AUDIT.md. ``after_localize`` is the step the pipeline runs after the localizer: the
static-scale headroom audit and the weight audit (from the runners already loaded: no extra
I/O) add their findings to the report and a cause category goes on the top culprit finding;
it returns the typed ``Audits`` for the run record.
``measure`` is the part that reads only the runners and the captures (no report): the pipeline
runs it beside the activation patching; ``after_localize`` takes its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..comparison.record import Audits


@dataclass(frozen=True)
class Measured:
    """What the audits measure before anything is added to a report."""

    headroom: list[dict[str, Any]]  # activations.headroom_rows
    kv: list[dict[str, Any]]  # activations.kv_rows
    weights: Any  # weights.WeightAudit


def measure(ref_caps: Any, ref_runner: Any, cand_runner: Any, devices: Any = None) -> Measured:
    """The headroom rows and the weight audit of two loaded runners (the report is not touched); ``devices``: where
    the weight pairs are compared (``weights.audit_runners``)."""
    import torch

    from .activations import headroom_rows, kv_rows
    from .weights import audit_runners

    with torch.no_grad():
        return Measured(headroom_rows(ref_caps, cand_runner, ref_runner), kv_rows(ref_caps, cand_runner),
                        audit_runners(ref_runner, cand_runner, scales=False, devices=devices))  # scales: reported


def after_localize(report: Any, ref_runner: Any, cand_runner: Any, ref_caps: Any, localization: Any = None,
                   measured: Measured | None = None) -> Audits:
    """Run the audits on loaded runners (or take ``measured``), add their findings, annotate the culprit; returns
    ``Audits``."""
    from .activations import audit_activation_scales
    from .causes import annotate_culprit, collect

    m = measured or measure(ref_caps, ref_runner, cand_runner)
    headroom = audit_activation_scales(report, ref_caps, cand_runner, ref_runner, rows=(m.headroom, m.kv))
    wa = m.weights
    wa.add_to_report(report)
    if wa.cand_format == "gguf":  # per-tensor, per-type and per-layer tables of a GGUF candidate
        from .gguf_types import add_gguf_sections

        add_gguf_sections(report, wa, localization)
    # which modules' inputs clip: their output is smaller than the reference's for that reason alone
    clipped = {r["module"]: r["ratio"] for r in headroom if r["ratio"] > 1.0 and not r["scale_kind"].startswith("kv")}
    cause = annotate_culprit(report, collect(report, cand_runner, wa, localization, clipped))
    return Audits.build(cause, headroom, wa.rows)


__all__ = ["Measured", "after_localize", "measure"]
