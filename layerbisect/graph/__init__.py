"""The one decoder graph, built from a ``ModelSpec`` (``layerbisect/spec.py``).

``decoder.Decoder`` is the model both runners build; ``layer``, ``attention`` and ``ffn`` hold
its modules, ``ops`` the plain helpers, ``names`` the tensor-name tables of each file format,
and ``inventory`` what is derived from a built graph (capture points, linears, byte counts).
"""

from __future__ import annotations

from .attention import Attention, KVCache, KVQuant
from .decoder import Decoder
from .deltanet import GatedDeltaNet, GatedRMSNorm, RecurrentState
from .ffn import MLP, MoE, route
from .inventory import capture_points, estimate_fp32_bytes, layer_fp32_bytes, meta_model, quantizable_linears
from .layer import Layer
from .modules import get_module, set_module, shared_copy
from .ops import Recorder, RMSNorm, apply_rope, rope_inv_freq, softcap

__all__ = [
    "MLP",
    "Attention",
    "Decoder",
    "GatedDeltaNet",
    "GatedRMSNorm",
    "KVCache",
    "KVQuant",
    "Layer",
    "MoE",
    "RMSNorm",
    "Recorder",
    "RecurrentState",
    "apply_rope",
    "capture_points",
    "estimate_fp32_bytes",
    "get_module",
    "layer_fp32_bytes",
    "meta_model",
    "quantizable_linears",
    "rope_inv_freq",
    "route",
    "set_module",
    "shared_copy",
    "softcap",
]
