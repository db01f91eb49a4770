"""What the rest of the package needs to know about a graph, derived by walking it (built on ``meta``).

Nothing here restates a layer's structure: capture points come from the modules' own
``points()``, linear modules are the graph's ``nn.Linear`` children, parameter shapes and
byte counts are those of the built parameters. Building on ``meta`` allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from ..spec import ModelSpec
from .decoder import Decoder
from .layer import Layer
from .ops import Recorder, RMSNorm


def meta_model(spec: ModelSpec) -> Decoder:
    """The graph of ``spec`` with every parameter on the ``meta`` device (no memory)."""
    with torch.device("meta"):
        return Decoder(spec)


@lru_cache(maxsize=16)
def capture_points(spec: ModelSpec) -> tuple[str, ...]:
    """Every capture point of ``spec``'s graph in execution order (docs/CAPTURE_NAMES.md)."""
    return tuple(meta_model(spec).points())


@dataclass(frozen=True)
class ParamInfo:
    """One parameter or buffer of the graph: canonical name, its module, leaf, shape, and what kind of module."""

    name: str
    module: str
    leaf: str
    shape: tuple[int, ...]
    kind: str  # linear / norm / embedding / scale / buffer

    @property
    def layer(self) -> int | None:
        parts = self.name.split(".")
        return int(parts[1]) if parts[0] == "layers" and parts[1].isdigit() else None


def params(model: nn.Module, prefix: str = "") -> list[ParamInfo]:
    """Parameters and named buffers of ``model`` (any part of the graph), in registration order."""
    out: list[ParamInfo] = []
    for mname, mod in model.named_modules():
        full = f"{prefix}{mname}" if mname else prefix.rstrip(".")
        kind = ("linear" if isinstance(mod, nn.Linear) else "norm" if isinstance(mod, RMSNorm)
                else "embedding" if isinstance(mod, nn.Embedding) else "buffer")
        scales = getattr(mod, "scale_params", ())  # learned multipliers whose identity is 1.0 (Gemma 4)
        for leaf, p in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            if p is None:
                continue
            out.append(ParamInfo(f"{full}.{leaf}" if full else leaf, full, leaf, tuple(p.shape),
                                 "scale" if leaf in scales else kind))
    return out


def linear_modules(model: nn.Module, prefix: str = "") -> list[str]:
    """Names of the linear modules of ``model`` (canonical, with ``prefix``), in execution order."""
    return [f"{prefix}{n}" for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def quantizable_linears(spec: ModelSpec) -> list[str]:
    """Every linear module of the whole graph in execution order (``lm_head`` last; omitted when tied)."""
    names = linear_modules(meta_model(spec))
    return [n for n in names if not (n == "lm_head" and spec.tied_embeddings)]


@lru_cache(maxsize=16)
def linear_shards(spec: ModelSpec) -> dict[str, tuple[tuple[str, int, int], ...]]:
    """Fused projections: linear name → its shards (label, first row, end row), from the modules' ``shards()``.

    E.g. a Gated DeltaNet's ``in_proj_qkv`` holds q, k and v rows (one HF tensor with one
    per-tensor scale, several logical matrices to an engine that fuses it further).
    """
    out: dict[str, tuple[tuple[str, int, int], ...]] = {}
    for name, mod in meta_model(spec).named_modules():
        fn = getattr(mod, "shards", None)
        if callable(fn):
            for child, rows in fn().items():
                out[f"{name}.{child}" if name else child] = tuple(rows)
    return out


def layer_fp32_bytes(spec: ModelSpec, i: int | None = None) -> int:
    """FP32 bytes of layer ``i``'s parameters (the largest layer when ``i`` is None)."""
    if i is None:
        return max(layer_fp32_bytes(spec, j) for j in range(spec.n_layers)) if spec.n_layers else 0
    with torch.device("meta"):
        layer = Layer(spec, i, Recorder())
    return 4 * sum(p.numel() for p in layer.parameters())


def estimate_fp32_bytes(spec: ModelSpec) -> int:
    """4 bytes per parameter of the graph (tied embeddings counted once)."""
    model = meta_model(spec)
    tied = spec.tied_embeddings
    return 4 * sum(p.numel() for name, p in model.named_parameters() if not (tied and name == "lm_head.weight"))


__all__ = [
    "ParamInfo",
    "capture_points",
    "estimate_fp32_bytes",
    "layer_fp32_bytes",
    "linear_modules",
    "linear_shards",
    "meta_model",
    "params",
    "quantizable_linears",
]
