"""Opening a GGUF file: memory-mapped, metadata as plain Python values, clear errors.

``gguf.GGUFReader`` (through ``FastGGUFReader``, which parses large metadata arrays lazily and
checks every count, length and offset against the file size before allocating anything) maps
the file and parses the header; tensor data stays on disk until a tensor is dequantized. A path
that is not a regular readable file, a file that is not GGUF, a truncated or self-contradicting
header, or a tensor whose data runs past the end of the file becomes one ``InputError`` naming
the file. Metadata arrays longer than ``MAX_FIELD_ARRAY`` are left out of ``fields`` (no model
setting is that long; the tokenizer reads its arrays from the reader on demand).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..validation import open_regular, regular_file
from .fast_reader import FastGGUFReader, GGUFFormatError

GGUF_MAGIC = b"GGUF"
MAX_FIELD_ARRAY = 1 << 16


class GGUFFile:
    """A GGUF file opened for reading: ``fields`` (key → value) and ``tensors`` (name → ReaderTensor)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        regular_file(self.path, "GGUF file")
        try:
            with open_regular(self.path, "GGUF file") as f:
                magic = f.read(4)
        except OSError as e:
            raise InputError(self.path, f"cannot read: {e.strerror or e}") from None
        if magic != GGUF_MAGIC:
            raise InputError(self.path, f"not a GGUF file (magic {magic!r}, expected b'GGUF')")
        try:
            self.reader = FastGGUFReader(self.path, "r")
        except GGUFFormatError as e:
            raise InputError(self.path, str(e)) from None
        except OSError as e:
            raise InputError(self.path, f"cannot map the file: {e.strerror or e}") from None
        self.tensors = {t.name: t for t in self.reader.tensors}
        from .gguf_dequant import supported_types

        ok = set(supported_types())
        for t in self.reader.tensors:  # every tensor is dequantized (an unmapped one is refused later)
            if t.tensor_type.name not in ok:
                raise InputError(self.path, f"tensor {t.name!r} has type {t.tensor_type.name}, which layerbisect "
                                            f"cannot dequantize (supported: {', '.join(sorted(ok))})")

    @cached_property
    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, field in self.reader.fields.items():
            if len(field.data) > MAX_FIELD_ARRAY:
                continue
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
