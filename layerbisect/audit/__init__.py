"""Audits that explain a divergence: weights and scales (no forward pass), activation scales, causes.

See docs/AUDIT.md. ``after_localize`` is the hook the localizer calls at its end: it adds the
static-scale headroom audit, the weight audit (from the runners already loaded: no extra I/O)
and puts a cause category on the top culprit finding.
"""

from __future__ import annotations

from typing import Any


def after_localize(report: Any, ref_runner: Any, cand_runner: Any, ref_caps: Any) -> str:
    """Run the audits on loaded runners and annotate the culprit; returns the cause category."""
    from .activations import audit_activation_scales
    from .causes import annotate_culprit, collect
    from .weights import audit_runners

    audit_activation_scales(report, ref_caps, cand_runner, ref_runner)
    wa = audit_runners(ref_runner, cand_runner, scales=False)  # the pipeline reported scales already
    wa.add_to_report(report)
    return annotate_culprit(report, collect(report, cand_runner, wa))


__all__ = ["after_localize"]
