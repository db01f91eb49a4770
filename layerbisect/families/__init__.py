"""Family adapters: GGUF metadata or a HF config → ``ModelSpec``; one module per family.

Every module of this package that defines a ``Family`` subclass is an adapter; adding a
family is adding one module here (plus a graph module only when a new kind of layer
appears). ``spec_from_gguf``/``spec_from_hf`` pick the adapter by GGUF
``general.architecture`` or HF ``model_type``.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..spec import ModelSpec
from .base import Family, GGUFMeta, HFConfig

_SUPPORT = {"base", "common"}


@cache
def families() -> dict[str, Family]:
    """name → adapter instance, for every adapter module of this package."""
    out: dict[str, Family] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name in _SUPPORT or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Family) and obj is not Family and obj.name \
                    and obj.__module__ == mod.__name__:
                out[obj.name] = obj()
    return out


def by_gguf_arch(arch: str | None, path: str | Path = "") -> Family:
    for fam in families().values():
        if arch in fam.gguf_archs:
            return fam
    archs = sorted(a for f in families().values() for a in f.gguf_archs)
    raise InputError(path, f"unsupported architecture {arch!r} (supported: {', '.join(archs)})")


def by_hf_model_type(model_type: str | None, path: str | Path = "") -> Family:
    for fam in families().values():
        if model_type in fam.hf_model_types:
            return fam
    types = sorted(t for f in families().values() for t in f.hf_model_types)
    raise InputError(path, f"unsupported model_type {model_type!r} (supported: {', '.join(types)})")


def spec_from_gguf(fields: dict[str, Any], tensors: list[str], n_vocab: int, path: str | Path = "") -> ModelSpec:
    """The spec of a GGUF from its metadata (``fields``: key → python value) and tensor names; no tensor is read."""
    fam = by_gguf_arch(fields.get("general.architecture"), path)
    return fam.from_gguf(GGUFMeta(fields, tensors, n_vocab, path))


def spec_from_hf(cfg: dict[str, Any], path: str | Path = "") -> ModelSpec:
    """The spec of a HF checkpoint from its ``config.json`` dict (the text config of multimodal wrappers)."""
    hc = HFConfig(cfg, path)
    return by_hf_model_type(hc.model_type, path).from_hf(hc)


def family_of(spec: ModelSpec) -> Family:
    return families()[spec.family]


def supported_architectures() -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(family, GGUF archs, HF model types) for every adapter, for docs and errors."""
    return [(f.name, f.gguf_archs, f.hf_model_types) for f in sorted(families().values(), key=lambda f: f.name)]


__all__ = ["Family", "by_gguf_arch", "by_hf_model_type", "families", "family_of", "spec_from_gguf", "spec_from_hf",
           "supported_architectures"]
