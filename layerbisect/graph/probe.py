"""The input each linear module of a layer actually sees, taken by running the layer with hooks.

Localization (per-module patching) and the activation-scale audit need, for every linear, the
reference's input of that linear. Instead of a table of "which capture point feeds which
linear" (a layer's structure written down again), the layer is run once on its captured input
with a forward pre-hook on each ``nn.Linear``: whatever the layer kind (attention, MoE
experts fed only the tokens routed to them, recurrent projections), the hook sees exactly the
rows the module computed on. The hooks record the calling thread's forward only: another thread
may run the same model meanwhile (the pipeline's localization beside the expected lane).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

from ..capture import Captures
from ..kernels import on_device
from .attention import KVCache
from .context import layer_cache


@torch.no_grad()
def linear_inputs(model: nn.Module, index: int, x_in: torch.Tensor, pos: torch.Tensor | None = None,
                  cache: KVCache | None = None, caps: Captures | None = None) -> dict[str, torch.Tensor]:
    """Run ``model.layers[index]`` on ``x_in`` (T, d); return canonical linear name → its input (rows, in) in FP32.

    What the layer reads besides ``x_in`` (shared K/V, per-layer inputs) comes from ``cache``,
    or is rebuilt from ``caps`` (the whole-sequence captures ``x_in`` came from; ``graph/context.py``).
    A module called several times (none today) gets its inputs concatenated; a module never
    called (an expert no token was routed to) is absent. Captures are off during the run.

    Called with ``caps`` and neither ``pos`` nor ``cache`` (every caller today: the expected lane's
    static scales and its per-linear patching, the localizer's, the activation-scale audit), the result
    is kept with ``caps`` (``_memo``) and reused while the layer holds the same linear modules and
    weights: one probe per layer per run instead of one per caller.
    """
    layer = model.layers[index]
    key = _memo_key(model, layer, index, x_in) if caps is not None and pos is None and cache is None else None
    memo = _memo(caps) if key is not None else None
    if memo is not None and key in memo:
        return dict(memo[key])
    dev = next((p.device for p in layer.parameters() if p.device.type != "meta"), x_in.device)
    if cache is None and caps is not None:
        cache = layer_cache(model.cfg, caps, index, dev)
    pos = pos if pos is not None else torch.arange(x_in.shape[0], device=dev)
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    prefix = f"layers.{index}."
    me = threading.get_ident()
    for name, mod in layer.named_modules():
        if isinstance(mod, nn.Linear):
            def hook(_m: nn.Module, args: tuple, name: str = name) -> None:
                if threading.get_ident() == me:
                    seen.setdefault(prefix + name, []).append(args[0].detach().float().reshape(-1, args[0].shape[-1]))

            handles.append(mod.register_forward_pre_hook(hook))
    saved = model.rec.captures
    model.rec.captures = None
    try:
        with on_device(dev):
            layer(x_in.to(dev), pos.to(dev), cache)
    finally:
        model.rec.captures = saved
        for h in handles:
            h.remove()
    out = {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in seen.items()}
    if memo is not None:
        memo[key] = out
    return dict(out)


_MEMOS: dict[int, dict[tuple, dict[str, torch.Tensor]]] = {}  # id(captures) → probe results, dropped with them


def _memo(caps: Captures) -> dict[tuple, dict[str, torch.Tensor]]:
    memo = _MEMOS.get(id(caps))
    if memo is None:
        memo = _MEMOS[id(caps)] = {}
        weakref.finalize(caps, _MEMOS.pop, id(caps), None)
    return memo


def _memo_key(model: nn.Module, layer: nn.Module, index: int, x_in: torch.Tensor) -> tuple:
    """What a probe's result depends on: the model, the layer's linear modules and their weights (a module
    swapped in, such as the expected lane's, or a weight replaced changes it), and the input tensor."""
    mods = tuple((id(m), getattr(getattr(m, "weight", None), "data_ptr", lambda: 0)())
                 for m in layer.modules() if isinstance(m, nn.Linear) or hasattr(m, "dequantized_weight"))
    return id(model), index, mods, x_in.data_ptr(), tuple(x_in.shape), x_in.device.type


__all__ = ["linear_inputs"]
