"""Block layouts of block-scaled formats: one (rows, cols) block per scale, shared by the reference and the kernels."""

from __future__ import annotations

import math

Block = tuple[int, int]


def resolve_block(shape: tuple[int, int], block: tuple[int | None, int | None]) -> Block:
    """``None`` in a block dimension means 'the whole extent' (per-tensor: (None, None); per-row: (1, None))."""
    r, c = shape
    bh = r if block[0] is None else block[0]
    bw = c if block[1] is None else block[1]
    return max(bh, 1), max(bw, 1)


def scale_shape(shape: tuple[int, int], block: Block) -> tuple[int, int]:
    """(ceil(R / bh), ceil(C / bw)): one scale per block, partial last blocks included."""
    return math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])


__all__ = ["Block", "resolve_block", "scale_shape"]
