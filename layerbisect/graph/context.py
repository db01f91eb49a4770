"""What a single layer reads besides its residual input, rebuilt from a whole-sequence pass's captures.

Activation patching and the linear-input probes run one layer on the reference's input to
that layer. Most layers need nothing else; two Gemma 4 features do:

- a shared-KV layer (``AttentionSpec.kv_source``) attends over the keys/values its source
  layer wrote: the source's ``attn.k``/``attn.v`` captures are exactly what entered the
  cache (after norms, rope and any KV quantization), so they are put back into a ``KVCache``;
- a layer with a per-layer input block reads its slice of ``per_layer.inputs``.

Patching with the *reference's* K/V and per-layer inputs keeps the layer's error local:
whatever the candidate's source layer or PLE projection did wrong shows at those points, not
at this layer.
"""

from __future__ import annotations

import torch

from ..capture import Captures
from ..spec import ModelSpec
from .attention import KVCache


def context_points(spec: ModelSpec, index: int) -> list[str]:
    """Capture points layer ``index`` needs besides its input (empty for most layers)."""
    ls = spec.layers[index]
    src = getattr(ls.mixer, "kv_source", None)
    out = [f"layers.{src}.attn.k", f"layers.{src}.attn.v"] if src is not None else []
    return out + (["per_layer.inputs"] if ls.per_layer_input else [])


def layer_cache(spec: ModelSpec, caps: Captures, index: int,
                device: torch.device | str | None = None) -> KVCache | None:
    """A ``KVCache`` holding what layer ``index`` reads from outside (None when it reads nothing).

    Raises ``KeyError`` naming the missing capture point when ``caps`` was narrowed past it.
    """
    need = context_points(spec, index)
    if not need:
        return None
    missing = [n for n in need if n not in caps.tensors]
    if missing:
        raise KeyError(f"layer {index} needs the captures {', '.join(missing)}")
    cache = KVCache()
    ls = spec.layers[index]
    src = getattr(ls.mixer, "kv_source", None)
    if src is not None:
        m = spec.layers[src].mixer
        k, v = caps[f"layers.{src}.attn.k"], caps[f"layers.{src}.attn.v"]  # (T, KV·D) each
        cache.k[src] = k.view(k.shape[0], m.n_kv_heads, m.head_dim).to(device)
        cache.v[src] = v.view(v.shape[0], m.n_kv_heads, m.head_dim).to(device)
    if ls.per_layer_input:
        ple = caps["per_layer.inputs"]  # (T, L·P)
        cache.per_layer_inputs = ple.view(ple.shape[0], spec.n_layers, ls.per_layer_input).to(device)
    return cache


__all__ = ["context_points", "layer_cache"]
