"""Audits that explain a divergence: weights and scales (no forward pass), activation scales, causes.

See docs/AUDIT.md. ``after_localize`` is the step the pipeline runs after the localizer: the
static-scale headroom audit and the weight audit (from the runners already loaded: no extra
I/O) add their findings to the report and a cause category goes on the top culprit finding;
it returns the typed ``Audits`` for the run record.
"""

from __future__ import annotations

from typing import Any

from ..comparison.record import Audits


def after_localize(report: Any, ref_runner: Any, cand_runner: Any, ref_caps: Any, localization: Any = None) -> Audits:
    """Run the audits on loaded runners, add their findings, annotate the culprit; returns ``Audits``."""
    from .activations import audit_activation_scales
    from .causes import annotate_culprit, collect
    from .weights import audit_runners

    headroom = audit_activation_scales(report, ref_caps, cand_runner, ref_runner)
    wa = audit_runners(ref_runner, cand_runner, scales=False)  # the pipeline reported scales already
    wa.add_to_report(report)
    if wa.cand_format == "gguf":  # per-tensor, per-type and per-layer tables of a GGUF candidate
        from .gguf_types import add_gguf_sections

        add_gguf_sections(report, wa, localization)
    # which modules' inputs clip: their output is smaller than the reference's for that reason alone
    clipped = {r["module"]: r["ratio"] for r in headroom if r["ratio"] > 1.0 and not r["scale_kind"].startswith("kv")}
    cause = annotate_culprit(report, collect(report, cand_runner, wa, localization, clipped))
    return Audits.build(cause, headroom, wa.rows)


__all__ = ["after_localize"]
