"""The reference runner: a GGUF (any common llama.cpp quant type) dequantized to FP32."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..capture import Captures
from ..heap import release_free_memory
from ..runner import ModelRunner
from .gguf_model import load_reference_model


class ReferenceRunner(ModelRunner):
    kind = "reference"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        progress: Callable[[str, int, int], None] | None = None,
    ):
        super().__init__(str(path), device=device)
        self.progress = progress
        self.gguf = None

    def _build(self) -> None:

        self.model, self.gguf = load_reference_model(self.path, device=self.device, progress=self.progress)
        self._tokenizer_reader = self.gguf.reader
        _drop_file_pages(self.gguf.reader)
        release_free_memory(self.device)  # the dequantization's temporaries

    @property  # type: ignore[override]
    def tokenizer(self):  # built on first use: 262k-token vocabularies take a moment
        if getattr(self, "_tok", None) is None and getattr(self, "_tokenizer_reader", None) is not None:
            from ..tokenizer import tokenizer_from_gguf

            self._tok = tokenizer_from_gguf(self._tokenizer_reader, self.path)
        return getattr(self, "_tok", None)

    @tokenizer.setter
    def tokenizer(self, value) -> None:
        self._tok = value

    def tensor_types(self) -> dict[str, str]:
        """Canonical parameter → GGML type name (``Q4_K``, ``F32``, …) of the GGUF tensor it is read from."""
        from .gguf_model import map_tensors

        assert self.gguf is not None, "runner not activated"
        tmap = map_tensors(self.gguf, self.config)  # header only: no weight is read
        return {name: self.gguf.tensors[src.tensor].tensor_type.name for name, src in tmap.sources.items()}


def _drop_file_pages(reader: object) -> None:
    """Every tensor has been dequantized into memory of its own: the file's pages leave this process's RSS.

    The GGUF is mapped shared and read-only, so ``MADV_DONTNEED`` only unmaps the pages read so
    far (0.23 GB for Gemma 3 270M); metadata read later faults its pages in again from the page cache.
    """
    import mmap

    mm = getattr(getattr(reader, "data", None), "_mmap", None)
    if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def run_gguf(
    path: str | Path,
    token_ids: Sequence[int],
    *,
    select: str | Sequence[str] | None = "*",
    summary_only: bool = False,
    device: str | torch.device = "cpu",
) -> Captures:
    """Run the GGUF reference over ``token_ids`` and return its captures."""
    with ReferenceRunner(path, device=device) as r:
        return r.run(token_ids, select=select, summary_only=summary_only)
