"""Fixture producers: the bundled real model, HF weights of it, candidates made by the real quantizer,
tiny random models, and a GGUF writer for them. See docs/FIXTURES.md.

Imports are lazy (transformers / llmcompressor are optional extras and slow to import).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "cache_dir",
    "bundled_gguf",
    "hf_checkpoint_from_gguf",
    "quantize_checkpoint",
    "SCHEMES",
    "make_tiny_hf",
    "write_gguf_from_hf",
]

_WHERE = {
    "cache_dir": "cache",
    "bundled_gguf": "cache",
    "hf_checkpoint_from_gguf": "hf_from_gguf",
    "quantize_checkpoint": "quantize",
    "SCHEMES": "quantize",
    "make_tiny_hf": "tiny",
    "write_gguf_from_hf": "gguf_writer",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(name)
