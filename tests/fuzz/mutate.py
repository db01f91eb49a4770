"""Byte-level surgery on real files: where every count, length and offset of a GGUF header sits, and
safetensors files split into (header, data) and put back together with any header.

The offsets come from the reader run on a valid seed file (gguf-py's data model, through layerbisect's
``FastGGUFReader`` so that a 262k-token vocabulary takes a second, not a minute and gigabytes), so a mutation
changes exactly the field it names and nothing else.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Slot:
    """One integer field of a GGUF header: where it is, its width, what it counts."""

    offset: int
    fmt: str  # struct format: "<Q" (uint64) / "<I" (uint32)
    what: str  # e.g. "kv_count", "array_len tokenizer.ggml.tokens", "dim1 blk.0.attn_q.weight"

    @property
    def size(self) -> int:
        return struct.calcsize(self.fmt)


@dataclass(frozen=True)
class ValueSlot:
    """A scalar metadata value (its type tag and its bytes)."""

    key: str
    type_offset: int
    offset: int
    fmt: str  # struct format of the stored value


_SCALAR_FMT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_slots(path: str | Path) -> tuple[list[Slot], list[ValueSlot], int]:
    """(count/length/offset slots, scalar value slots, data offset) of a valid GGUF."""
    from layerbisect.references.fast_reader import FastGGUFReader

    r = FastGGUFReader(path)
    slots = [Slot(8, "<Q", "tensor_count"), Slot(16, "<Q", "kv_count")]
    values: list[ValueSlot] = []
    for key, f in r.fields.items():
        if key.startswith("GGUF."):
            continue
        off = f.offset
        slots.append(Slot(off, "<Q", f"key_len {key}"))
        t_off = off + 8 + int(f.parts[0][0])
        slots.append(Slot(t_off, "<I", f"value_type {key}"))
        vtype = int(f.parts[2][0])
        v_off = t_off + 4
        if vtype == 8:  # string
            slots.append(Slot(v_off, "<Q", f"str_len {key}"))
        elif vtype == 9:  # array
            slots.append(Slot(v_off, "<I", f"array_type {key}"))
            slots.append(Slot(v_off + 4, "<Q", f"array_len {key}"))
            if int(f.parts[3][0]) == 8 and len(f.data):  # first string of a string array
                slots.append(Slot(v_off + 12, "<Q", f"array_str0_len {key}"))
        elif vtype in _SCALAR_FMT:
            values.append(ValueSlot(key, t_off, v_off, _SCALAR_FMT[vtype]))
    for t in r.tensors:
        f = t.field
        off = f.offset
        name_len = int(f.parts[0][0])
        slots.append(Slot(off, "<Q", f"name_len {t.name}"))
        nd_off = off + 8 + name_len
        slots.append(Slot(nd_off, "<I", f"n_dims {t.name}"))
        n_dims = int(f.parts[2][0])
        for k in range(n_dims):
            slots.append(Slot(nd_off + 4 + 8 * k, "<Q", f"dim{k} {t.name}"))
        ty_off = nd_off + 4 + 8 * n_dims
        slots.append(Slot(ty_off, "<I", f"type {t.name}"))
        slots.append(Slot(ty_off + 4, "<Q", f"data_offset {t.name}"))
    return slots, values, int(r.data_offset)


def set_slot(data: bytearray, slot: Slot, value: int) -> None:
    mask = (1 << (8 * slot.size)) - 1
    data[slot.offset : slot.offset + slot.size] = struct.pack(slot.fmt, value & mask)


def gguf_value_slot(path: str | Path, key: str) -> ValueSlot:
    _, values, _ = gguf_slots(path)
    for v in values:
        if v.key == key:
            return v
    raise KeyError(key)


def patch_value(src: str | Path, dst: str | Path, key: str, value: Any) -> Path:
    """Copy a GGUF with one scalar metadata value replaced (same type and width)."""
    v = gguf_value_slot(src, key)
    data = bytearray(Path(src).read_bytes())
    data[v.offset : v.offset + struct.calcsize(v.fmt)] = struct.pack(v.fmt, value)
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def array_len_slot(path: str | Path, key: str) -> Slot:
    slots, _, _ = gguf_slots(path)
    return next(s for s in slots if s.what == f"array_len {key}")


def header_bytes(path: str | Path) -> bytearray:
    """The header of a GGUF (everything before the tensor data)."""
    _, _, data_offset = gguf_slots(path)
    with open(path, "rb") as f:
        return bytearray(f.read(data_offset))


# ---------------------------------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------------------------------


def st_split(path: str | Path) -> tuple[dict[str, Any], bytes]:
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def st_write(path: str | Path, header: Any, data: bytes, *, raw_header: bytes | None = None,
             declared_len: int | None = None) -> Path:
    hb = raw_header if raw_header is not None else json.dumps(header).encode()
    n = len(hb) if declared_len is None else declared_len
    Path(path).write_bytes(struct.pack("<Q", n & 0xFFFFFFFFFFFFFFFF) + hb + data)
    return Path(path)


def st_edit(path: str | Path, fn) -> Path:  # noqa: ANN001 - fn(header) -> header
    h, d = st_split(path)
    return st_write(path, fn(h), d)


def tensor_key(header: dict[str, Any], suffix: str) -> str:
    return next(k for k in header if k != "__metadata__" and k.endswith(suffix))


__all__ = ["Slot", "ValueSlot", "array_len_slot", "gguf_slots", "gguf_value_slot", "patch_value", "set_slot",
           "st_edit", "st_split", "st_write", "tensor_key"]
