"""The candidate's arithmetic in FP16 or BF16: every op's result rounded to the compute dtype.

Design notes
- Engines run quantized checkpoints with BF16 or FP16 activations. FP16's largest finite value
  is 65504: a residual stream or an FFN-down input that grows past it becomes Inf, then NaN
  (transformers issue 36822, Gemma 3 in FP16; llama.cpp issue 26044). ``--compute-dtype``
  reproduces it without a second graph: the graph stays FP32, and a ``TorchFunctionMode``
  rounds the result of every op on activations to the compute dtype (``x.to(dtype).float()``),
  which is what a kernel computing in FP32 and storing in FP16/BF16 does. Values past the
  dtype's range become ±Inf exactly where an engine's would, and the NaN/Inf onset finding
  names that op.
- What counts as an activation: the embedding's output and anything computed from an
  activation. Constants derived from positions (rope angles, masks) stay FP32, as engines
  compute rope tables in FP32 (transformers ``_compute_default_rope_parameters`` under
  ``autocast(enabled=False)``).
- Some modules compute internally in FP32 and round only their output: RMSNorm
  (transformers upcasts to FP32 and casts back with ``type_as``), and the quantized linears
  (their emulation is exact, accumulation in FP32, output stored in the compute dtype). The
  mode is suspended inside them and their output is rounded by a forward hook.
- ``install(model, dtype)`` registers hooks on the decoder and on each layer (activation
  patching runs a layer alone) and returns a handle whose ``remove()`` undoes it; FP32 installs
  nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

ComputeDtype = Literal["fp32", "bf16", "fp16"]
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_ACT = "_lb_activation"  # attribute that marks a tensor as an activation (derived from the embedding)


def parse(name: str) -> ComputeDtype:
    from .errors import InputError

    key = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}.get(name, name)
    if key not in DTYPES:
        raise InputError("--compute-dtype", f"{name!r} is not one of fp32, bf16, fp16")
    return key  # type: ignore[return-value]


def _is_act(x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return bool(getattr(x, _ACT, False))
    if isinstance(x, (list, tuple)):
        return any(_is_act(v) for v in x)
    return False


def _round(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        if x.dtype == torch.float32:
            x = x.to(dtype).float()
        if x.is_floating_point():
            setattr(x, _ACT, True)
        return x
    if isinstance(x, tuple):
        return tuple(_round(v, dtype) for v in x)
    if isinstance(x, list):
        return [_round(v, dtype) for v in x]
    return x


class RoundingMode(TorchFunctionMode):
    """Rounds every op on activations to ``dtype`` (see module notes); ``suspended`` > 0 inside FP32 modules."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype
        self.suspended = 0
        self.depth = 0  # nested decoder/layer entries share one active mode

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.suspended:
            return out
        if func is torch.nn.functional.embedding or _is_act(args) or _is_act(list((kwargs or {}).values())):
            return _round(out, self.dtype)
        return out


class Installed:
    """Hooks of one ``install``; ``remove()`` takes them off."""

    def __init__(self, handles: list[Any], mode: RoundingMode | None):
        self.handles, self.mode = handles, mode

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def install(model: nn.Module, compute: ComputeDtype | str) -> Installed:
    """Round the activations of ``model``'s forward (and of each layer run alone) to ``compute``."""
    dtype = DTYPES[parse(str(compute))]
    if dtype == torch.float32:
        return Installed([], None)
    mode = RoundingMode(dtype)
    handles: list[Any] = []

    def enter(_m: nn.Module, args: tuple) -> tuple:
        if mode.depth == 0:
            mode.__enter__()
        mode.depth += 1
        # a layer run alone on an FP32 input (activation patching): its input is an activation too
        return tuple(_round(a, dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    def leave(_m: nn.Module, _args: tuple, out: Any) -> Any:
        mode.depth -= 1
        if mode.depth == 0:
            mode.__exit__(None, None, None)
        return out

    def suspend(_m: nn.Module, _args: tuple) -> None:
        mode.suspended += 1

    def resume(_m: nn.Module, _args: tuple, out: Any) -> Any:
        mode.suspended -= 1
        return _round(out, dtype) if mode.depth else out

    outer = [model, *getattr(model, "layers", [])]
    for m in outer:
        handles.append(m.register_forward_pre_hook(enter))
        handles.append(m.register_forward_hook(leave))
    for m in model.modules():
        if _fp32_inside(m):
            handles.append(m.register_forward_pre_hook(suspend))
            handles.append(m.register_forward_hook(resume))
    return Installed(handles, mode)


def _fp32_inside(m: nn.Module) -> bool:
    from .candidates.qlinear import QuantLinear
    from .graph.ops import RMSNorm

    return isinstance(m, (RMSNorm, QuantLinear, nn.Linear))


__all__ = ["DTYPES", "ComputeDtype", "Installed", "RoundingMode", "install", "parse"]
