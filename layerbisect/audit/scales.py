"""Scale tensors that cannot be right: non-finite, zero or negative. Critical findings, named by tensor.

Design notes
- Every quantization scheme we read stores its scales as positive finite numbers: compressed-tensors
  ``weight_scale`` / ``input_scale`` (FP8 multipliers), ``weight_global_scale`` /
  ``input_global_scale`` (NVFP4 divisors), ModelOpt ``weight_scale_2`` / ``input_scale``, the E4M3
  block scales of NVFP4, and the KV-cache ``k_scale`` / ``v_scale``. A NaN or Inf anywhere, a zero
  or negative per-tensor (or global) scale, or a block-scale tensor that is all zeros cannot come
  from a calibration that worked; each is reported, never loaded as a silent pass and never a
  crash: the run goes on with the values as stored, so the report also shows where they surface.
- Zero entries inside a per-block / per-channel scale are legitimate (an all-zero block quantizes
  to scale 0) and are not reported on their own.
- The scan reads the checkpoint's scale tensors only (small: 1/16 of the weights for NVFP4 block
  scales, one number per module otherwise), by suffix of the tensor name, so it sees exactly what
  is stored, for resident and streamed candidates alike. ``bisect compare`` and ``bisect audit``
  both call it (``pipeline._load_findings``, ``weights.audit_runners``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..comparison.findings import Finding

SCALE_SUFFIXES = (
    "weight_scale", "weight_scale_2", "weight_global_scale", "input_scale", "input_global_scale",
    "output_scale", "k_scale", "v_scale",
)


@dataclass(frozen=True)
class ScaleFault:
    tensor: str  # the checkpoint's tensor name
    file: str
    cause: str  # nonfinite_scale / zero_scale / negative_scale
    numel: int
    bad: int  # entries at fault
    example: float  # one offending value

    @property
    def module(self) -> str:
        return self.tensor.rsplit(".", 1)[0]

    def describe(self) -> str:
        what = {"nonfinite_scale": "non-finite", "zero_scale": "zero", "negative_scale": "negative"}[self.cause]
        if self.numel == 1:
            return f"{self.tensor} = {self.example!r}"
        return f"{self.tensor}: {self.bad} of {self.numel} entries {what} (e.g. {self.example!r})"


def is_scale(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in SCALE_SUFFIXES


def check_scale(name: str, t: torch.Tensor, file: str = "") -> ScaleFault | None:
    """The fault of one scale tensor, or None. Any float dtype (E4M3 included); others are not scales."""
    if not (t.is_floating_point()):
        return None
    x = t.detach().to(torch.float32).reshape(-1)
    n = int(x.numel())
    if n == 0:
        return None
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        return ScaleFault(name, file, "nonfinite_scale", n, int(bad.sum()), float(x[bad][0]))
    neg = x < 0
    if bool(neg.any()):
        return ScaleFault(name, file, "negative_scale", n, int(neg.sum()), float(x[neg][0]))
    zero = x == 0
    if (n == 1 and bool(zero[0])) or bool(zero.all()):
        return ScaleFault(name, file, "zero_scale", n, int(zero.sum()), 0.0)
    return None


def scan_checkpoint(ck: Any) -> list[ScaleFault]:
    """Every faulty scale tensor of a ``candidates.checkpoint.Checkpoint``, in the file's key order."""
    out = []
    for key in ck.keys():
        if is_scale(key):
            f = check_scale(key, ck.get(key), str(ck.where[key]))
            if f is not None:
                out.append(f)
    return out


def canonical_module(hf_module: str, linear_names: Mapping[str, str] | None = None
                     ) -> tuple[str | None, int | None, str | None]:
    """(canonical module, layer, op) of a HF module name such as ``model.layers.3.self_attn.q_proj``.

    ``linear_names`` is the candidate runner's canonical → HF module map; without a match the layer is
    still read from the name (``layers.N.``) and the op is left out.
    """
    from ..capture import layer_of, op_of
    from ..graph.names import strip_hf_prefix

    for canon, hf in (linear_names or {}).items():
        if hf == hf_module:
            return canon, layer_of(canon), op_of(canon)
    s = strip_hf_prefix(hf_module)
    parts = s.split(".")
    layer = int(parts[1]) if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit() else None
    return None, layer, None


def findings(faults: list[ScaleFault], linear_names: Mapping[str, str] | None = None) -> list[Finding]:
    """One critical finding per cause, titled with the first tensor; evidence lists them all."""
    by: dict[str, list[ScaleFault]] = {}
    for f in faults:
        by.setdefault(f.cause, []).append(f)
    out = []
    for cause, fs in by.items():
        first = fs[0]
        canon, layer, op = canonical_module(first.module, linear_names)
        what = {"nonfinite_scale": "non-finite", "zero_scale": "zero", "negative_scale": "negative"}[cause]
        more = f" and {len(fs) - 1} more" if len(fs) > 1 else ""
        out.append(
            Finding(
                severity="critical",
                kind=cause,
                title=f"Scale tensor {first.tensor} is {what}{more}",
                point=canon,
                layer=layer,
                op=op,
                token_index=None,
                detail="; ".join(f.describe() for f in fs[:8]) + (" ..." if len(fs) > 8 else "")
                + f" (in {first.file}). A quantization scale must be finite and positive: the calibration "
                "or the export went wrong for these modules.",
                evidence={"tensors": [f.tensor for f in fs], "values": [f.example for f in fs], "file": first.file},
            )
        )
    return out


__all__ = ["ScaleFault", "check_scale", "findings", "is_scale", "scan_checkpoint"]
