"""Softcaps the candidate does not apply: values beyond the cap cannot come from ``cap·tanh(x/cap)``.

Design notes
- ``cap·tanh(x/cap)`` never leaves (−cap, cap). A candidate whose *post-softcap* logits reach
  beyond the reference model's final softcap did not apply it (SGLang issue 33915): that is a
  fact about the values, stronger than "saturated", and it names the fault.
- Attention softcaps act on scores that are not captured after the cap; there the candidate's
  own config says it (``attn_logit_softcapping`` missing: its graph has no cap), and the
  reference's captured pre-softcap scores say whether the cap matters for this prompt
  (tanh bends values beyond ~0.3·cap by more than 3 %).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from layerbisect.comparison.findings import Finding

MATTERS = 0.3  # |x| ≥ 0.3·cap: cap·tanh(x/cap) differs from x by ≥ 3 %


def detect_softcap_missing(ref_caps: Any, cand_caps: Any, ref_spec: Any, cand_spec: Any) -> list[Finding]:
    out: list[Finding] = []
    cap = getattr(ref_spec, "final_softcap", None)
    c = cand_caps.tensors.get("logits") if cand_caps is not None else None
    if cap and c is not None:
        finite = c[torch.isfinite(c)]
        top = float(finite.abs().max()) if finite.numel() else math.nan
        if top > cap * (1 + 1e-6):
            n = int((c.abs() > cap).sum())
            cfg = "" if getattr(cand_spec, "final_softcap", None) else " Its config has no final_logit_softcapping."
            out.append(Finding(
                "critical", "softcap_missing",
                f"Final softcap not applied: candidate logits reach {top:.4g}, beyond the cap {cap:g}",
                point="logits", op="logits",
                detail=f"{n} candidate logit(s) lie beyond ±{cap:g}, which cap·tanh(x/cap) cannot produce: the "
                f"candidate skips the final softcap.{cfg} Its distribution is then sharper than the reference's.",
                evidence={"cause": "softcap_missing", "cap": cap, "cand_max_abs": top, "n_beyond": n},
            ))
    ref_layers = getattr(ref_spec, "layers", ()) or ()
    cand_layers = getattr(cand_spec, "layers", ()) or ()
    missing = [ls.index for ls, cs in zip(ref_layers, cand_layers)
               if getattr(ls.mixer, "softcap", None) and not getattr(cs.mixer, "softcap", None)]
    if missing:
        i = missing[0]
        acap = ref_layers[i].mixer.softcap
        scores = ref_caps.tensors.get(f"layers.{i}.attn.scores") if ref_caps is not None else None
        ref_max = float(scores.abs().max()) if scores is not None and scores.numel() else math.nan
        matters = not (ref_max < MATTERS * acap)
        out.append(Finding(
            "critical" if matters else "warning", "softcap_missing",
            f"Attention softcap not applied in {len(missing)} layer(s), first layer {i} (cap {acap:g})",
            point=f"layers.{i}.attn.scores", layer=i, op="attn.scores",
            detail=f"The candidate's config has no attention softcap where the reference's model caps scores at "
            f"{acap:g}; the reference's pre-softcap scores reach {ref_max:.4g} on this prompt"
            + (" (the cap bends them: the attention pattern differs)." if matters else " (below the cap's knee: "
               "harmless on this prompt)."),
            evidence={"cause": "softcap_missing", "cap": acap, "layers": missing, "ref_max_pre_softcap": ref_max},
        ))
    return out


__all__ = ["detect_softcap_missing"]
