"""Engines: capture activations from any PyTorch engine (transformers, vLLM, SGLang) under the
canonical capture names, and read such dumps back as a candidate (docs/ENGINE_CAPTURE.md)."""

from __future__ import annotations

from layerbisect.engines.capture import ActivationCapture, capture_activations
from layerbisect.engines.dump import load_dump
from layerbisect.engines.namemap import NameMap, builtin_maps, resolve_name_map

__all__ = ["ActivationCapture", "NameMap", "builtin_maps", "capture_activations", "load_dump", "resolve_name_map"]
