"""The first NaN/Inf of a candidate computing in FP16/BF16: name the overflow and the op that produced it.

With ``--compute-dtype fp16`` every op's result is rounded to FP16 (``compute_dtype.py``); a
value past 65504 becomes Inf there and NaN downstream. The comparator's ``nonfinite_onset``
finding already names the first point in execution order; this step says *why* when the
compute dtype explains it: the reference's FP32 value at that point is past (or near) the
dtype's largest finite value. The cause (``compute_overflow``) and the op in words (the
residual add, the FFN-down input) go on the finding, where the culprit logic reads them.
"""

from __future__ import annotations

from typing import Any

import torch

from ..compute_dtype import DTYPES

OP_WORDS = {
    "attn_residual": "the residual add after attention",
    "out": "the residual add after the FFN (the layer's output)",
    "mlp.act": "the ffn_down input (act(gate)·up)",
    "mlp.down": "the ffn_down output",
    "mlp.gate": "the gate projection output",
    "mlp.up": "the up projection output",
    "attn.o_proj": "the attention output projection",
    "embed": "the scaled embedding",
}


def annotate_nonfinite(report: Any, ref_caps: Any, cand_runner: Any) -> None:
    compute = getattr(getattr(cand_runner, "options", None), "compute_dtype", "fp32")
    if compute == "fp32":
        return
    fmax = torch.finfo(DTYPES[compute]).max
    for f in report.findings:
        if f.kind != "nonfinite_onset" or not f.point:
            continue
        ref = ref_caps.tensors.get(f.point)
        ref_max = float(ref.abs().max()) if ref is not None and ref.numel() else float("nan")
        words = OP_WORDS.get(f.op or "", f.op or f.point)
        name = {"fp16": "FP16", "bf16": "BF16"}[compute]
        why = (f"{words} overflows {name}: the reference's FP32 value there reaches {ref_max:.4g}, past {name}'s "
               f"largest finite value {fmax:.6g}" if ref_max > fmax else
               f"{words} is the first op whose {name} result is not finite (the reference reaches {ref_max:.4g} "
               f"there; {name}'s largest finite value is {fmax:.6g})")
        f.evidence["cause"] = "compute_overflow"
        f.evidence["why"] = why
        f.evidence["compute_dtype"] = compute
        f.evidence["ref_max_abs"] = ref_max
        f.title += f" — {name} overflow in {words}"
        f.detail += f" With --compute-dtype {compute}: {why}."


__all__ = ["annotate_nonfinite"]
