"""Opening a GGUF file: memory-mapped, metadata as plain Python values, clear errors.

``gguf.GGUFReader`` (through ``FastGGUFReader``, which parses large metadata arrays lazily)
maps the file and parses the header; tensor data stays on disk until a
tensor is dequantized. A truncated file, a file that is not GGUF, or a tensor whose data
runs past the end of the file becomes one ``InputError`` naming the file.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .fast_reader import FastGGUFReader

GGUF_MAGIC = b"GGUF"


class GGUFFile:
    """A GGUF file opened for reading: ``fields`` (key → value) and ``tensors`` (name → ReaderTensor)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, "no such file")
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise InputError(self.path, f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        try:
            self.reader = FastGGUFReader(self.path, "r")
        except Exception as e:  # the reader raises ValueError/IndexError/struct errors on bad headers
            raise InputError(self.path, f"unreadable GGUF header ({type(e).__name__}: {e})") from None
        size = os.path.getsize(self.path)
        for t in self.reader.tensors:
            end = t.data_offset + t.n_bytes
            if end > size:
                raise InputError(self.path, f"truncated: tensor {t.name!r} ends at byte {end} but the file has {size}")
        self.tensors = {t.name: t for t in self.reader.tensors}

    @cached_property
    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            if key.startswith("tokenizer.ggml.") and key in (
                "tokenizer.ggml.tokens",
                "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges",
            ):
                continue  # large arrays: read by the tokenizer on demand
            try:
                v = field.contents()
            except Exception:
                continue
            if isinstance(v, np.generic):
                v = v.item()
            out[key] = v
        return out

    @property
    def architecture(self) -> str | None:
        return self.fields.get("general.architecture")

    def vocab_size(self) -> int:
        f = self.reader.fields.get("tokenizer.ggml.tokens")
        if f is not None:
            return len(f.data)
        emb = self.tensors.get("token_embd.weight")
        if emb is None:
            raise InputError(self.path, "no token_embd.weight tensor")
        return int(emb.shape[-1])

    def type_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for t in self.reader.tensors:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
        return counts
