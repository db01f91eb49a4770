"""No false alarm: the weight audit finds no fault in correct candidates of the real Gemma 3 270M.

The candidates are the demo's (FP8 and NVFP4, made by llmcompressor from BF16 weights of the
GGUF, cached). docs/AUDIT.md lists the measured result for all five schemes.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scheme", ["FP8", "NVFP4"])
def test_audit_has_no_false_alarm(gemma_reference, scheme):
    pytest.importorskip("llmcompressor", reason="install the [produce] extra")
    from layerbisect.audit.weights import audit_runners
    from layerbisect.candidates.runner import CandidateRunner
    from layerbisect.demo import prepare_candidates

    _, cands = prepare_candidates([scheme])
    audit = audit_runners(gemma_reference, CandidateRunner(cands[scheme]).activate())
    assert len(audit.rows) >= 236
    assert not audit.faults, "\n".join(str(f) for f in audit.faults[:5])
