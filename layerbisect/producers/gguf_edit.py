"""Planted faults in a GGUF: a copy with one tensor scaled, edited in place through gguf-py.

For testing tools against a known cause ("layer 5's ffn_down is 4x off"): the copy is written
with ``shutil.copyfile`` and the tensor's bytes are changed through gguf-py's reader opened ``"r+"``
(a writable memory map, the way gguf-py's own ``gguf_set_metadata.py`` edits files; our
``FastGGUFReader`` subclass, to skip parsing the vocabulary element by element), so every other
byte of the file is the original's.

Scaling is exact, without requantizing: for block formats only the per-block scale fields are
multiplied (GGUF spec / ggml-common.h block layouts)::

    F32, F16            every value
    Q8_0  [d f16][32 x i8]                 d
    Q4_0  [d f16][16 B nibbles]            d
    Q5_0  [d f16][qh 4 B][16 B]            d
    Q4_K  [d f16][dmin f16][scales 12 B][128 B]     d and dmin (value = d*sc*q - dmin*m)
    Q5_K  [d f16][dmin f16][scales 12 B][qh 32 B][128 B]   d and dmin
    Q6_K  [ql 128 B][qh 64 B][scales 16 x i8][d f16]       d (last two bytes)

A factor that would overflow F16 scales is refused.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from layerbisect.errors import InputError

# type name -> (block bytes, byte offsets of the f16 scale fields)
_BLOCK_SCALES: dict[str, tuple[int, tuple[int, ...]]] = {
    "Q8_0": (34, (0,)),
    "Q4_0": (18, (0,)),
    "Q5_0": (22, (0,)),
    "Q4_K": (144, (0, 2)),
    "Q5_K": (176, (0, 2)),
    "Q6_K": (210, (208,)),
}
SCALABLE: tuple[str, ...] = ("F32", "F16", *_BLOCK_SCALES)


def scale_tensor(src: str | Path, dst: str | Path, tensor: str, factor: float, *, overwrite: bool = False) -> Path:
    """Copy ``src`` to ``dst`` with GGUF tensor ``tensor`` multiplied by ``factor`` (exactly). Returns ``dst``."""
    from layerbisect.references.fast_reader import FastGGUFReader

    s, d = Path(src), Path(dst)
    if not s.is_file():
        raise InputError(s, "no such GGUF")
    if d.exists() and not overwrite:
        raise InputError(d, "exists; pass overwrite=True to replace it")
    names = {t.name: t for t in FastGGUFReader(s).tensors}
    if tensor not in names:
        raise InputError(s, f"has no tensor {tensor!r} (e.g. {', '.join(list(names)[:4])})")
    kind = names[tensor].tensor_type.name
    if kind not in SCALABLE:
        raise InputError(s, f"{tensor} is {kind}; scaling supports {', '.join(SCALABLE)}")
    tmp = d.with_name(f".{d.name}.tmp")
    shutil.copyfile(s, tmp)
    try:
        t = next(t for t in FastGGUFReader(tmp, "r+").tensors if t.name == tensor)
        data = t.data
        if kind in ("F32", "F16"):
            new = data.astype(np.float64) * factor
            if kind == "F16" and np.abs(new).max() > np.finfo(np.float16).max:
                raise InputError(s, f"{tensor} x {factor} overflows F16")
            data[...] = new.astype(data.dtype)
        else:
            block, offsets = _BLOCK_SCALES[kind]
            raw = data.reshape(-1)
            if raw.size % block:
                raise InputError(s, f"{tensor}: {raw.size} bytes is not a whole number of {kind} blocks")
            blocks = raw.reshape(-1, block)
            for off in offsets:
                scales = blocks[:, off : off + 2].copy().view(np.float16)
                new = scales.astype(np.float64) * factor
                if np.abs(new).max() > np.finfo(np.float16).max:
                    raise InputError(s, f"{tensor} x {factor}: a {kind} block scale overflows F16")
                blocks[:, off : off + 2] = new.astype(np.float16).view(np.uint8).reshape(-1, 2)
        del t, data
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(d)
    return d
