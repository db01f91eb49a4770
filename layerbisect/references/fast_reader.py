"""``gguf.GGUFReader`` without the per-element cost of large metadata arrays, and with every claim bounded.

Speed: gguf-py builds one numpy view per element of every metadata array while parsing the header:
for a 262k-token vocabulary (tokens, scores, token types) that is ~800k views and 10–30 s before a
single tensor is touched. This subclass keeps the reader's data model — a ``ReaderField`` whose
``parts[data[k]]`` is element k, so ``field.contents()`` and every consumer work unchanged — but makes
``parts`` a lazy sequence and ``data`` a ``range``: a scalar array is one view, a string array is one
pass over the length prefixes, and element views are cut on access. ``array_values(key)`` decodes a
whole array straight from the map (strings with one slice per element, scalars with one ``tolist``):
``field.contents()`` builds a numpy view per element, ~30 s for Gemma 4's 515k merges, this well under
a second.

Safety: a GGUF header is a list of claims (counts, string lengths, array lengths, dimensions,
offsets), and gguf-py believes them: an array claiming 10**9 strings made it allocate 8 GB and loop
for minutes. Here every count, length and offset is checked against the bytes left in the file
*before* anything is allocated or looped over (``_get`` refuses any read past the end, counts are
compared with the smallest size their items can have), and tensor infos are checked (known type,
at most 4 dimensions, each ≥ 1, row size a whole number of blocks, data aligned and inside the file)
before gguf-py builds its views. Every refusal is a ``GGUFFormatError`` whose message ``GGUFFile``
prints after the file name; a read past the end says "truncated".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField

GGML_MAX_DIMS = 4  # ggml.h
MAX_DIM = 1 << 40  # no real dimension comes near; keeps products in sane integer ranges
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value (a bool/uint8); key may be empty
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset (no dims, empty name)


class GGUFFormatError(ValueError):
    """A GGUF header that contradicts itself or the file size; the message is user-facing."""


class _ArrayParts(Sequence):
    """parts = head + [raw_itype, alen] + per-element views, materialized on access."""

    def __init__(self, head: list[Any], raw_itype: np.ndarray, alen: np.ndarray, elem: Any, n_elem_parts: int, n: int):
        self.head = list(head) + [raw_itype, alen]
        self.elem = elem  # (k, j) -> view of part j of element k
        self.per = n_elem_parts
        self.n = n

    def __len__(self) -> int:
        return len(self.head) + self.per * self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        h = len(self.head)
        if i < h:
            return self.head[i]
        k, j = divmod(i - h, self.per)
        if k >= self.n:
            raise IndexError(i)
        return self.elem(k, j)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]


class FastGGUFReader(GGUFReader):
    def __init__(self, path: Any, mode: str = "r"):
        self._where = "header"
        try:
            super().__init__(path, mode)  # type: ignore[arg-type]
        except GGUFFormatError:
            raise
        except UnicodeDecodeError as e:
            raise GGUFFormatError(f"a {self._where} is not UTF-8 (byte {e.start})") from None
        except (KeyError, ValueError, IndexError, OverflowError, TypeError) as e:
            # gguf-py's own checks (duplicate keys, unknown value types, bad alignment ...)
            raise GGUFFormatError(f"invalid GGUF header in {self._where}: {e}") from None

    # -- bounds --------------------------------------------------------------------------------------------------
    def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
        offset, count = int(offset), int(count)
        itemsize = np.dtype(dtype).itemsize
        end = offset + itemsize * count
        if offset < 0 or count < 0 or end > len(self.data):
            raise GGUFFormatError(
                f"truncated: the {self._where} at byte {offset} needs {itemsize * count} bytes "
                f"but the file has {len(self.data)}"
            )
        return super()._get(offset, dtype, count, override_order)

    def _claim(self, what: str, count: int, min_item: int, offs: int) -> None:
        left = len(self.data) - offs
        if count * min_item > left:
            raise GGUFFormatError(
                f"truncated or corrupt: {what} claims {count} entries (at least {count * min_item} bytes) "
                f"but {max(left, 0)} bytes remain after byte {offs}"
            )

    def array_values(self, key: str) -> list[Any] | None:
        """The Python list of metadata array ``key`` (None if absent or not a flat array)."""
        getter = getattr(self, "_array_getters", {}).get(key)
        return None if getter is None else getter()

    # -- metadata ------------------------------------------------------------------------------------------------
    def _build_fields(self, offs: int, count: int) -> int:
        self._claim("the metadata count", int(count), _MIN_KV_BYTES, offs)
        for k in range(int(count)):
            orig_offs = offs
            self._where = f"key of metadata entry #{k}"
            kv_klen, kv_kdata = self._get_str(offs)
            offs += int(kv_klen.nbytes + kv_kdata.nbytes)
            key = str(bytes(kv_kdata), encoding="utf-8")
            self._where = f"metadata {_short(key)}"
            raw_kv_type = self._get(offs, np.uint32)
            offs += int(raw_kv_type.nbytes)
            head = [kv_klen, kv_kdata, raw_kv_type]
            fast = self._fast_array(offs, int(raw_kv_type[0]), head, key)
            if fast is None:
                size, fparts, fidxs, ftypes = self._get_field_parts(offs, raw_kv_type[0])
                parts: Any = head + fparts
                idxs: Any = [i + len(head) for i in fidxs]
            else:
                size, parts, idxs, ftypes = fast
            self._push_field(ReaderField(orig_offs, key, parts, idxs, ftypes), skip_sum=True)
            offs += size
        return offs

    def _value_type(self, raw: int) -> GGUFValueType:
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise GGUFFormatError(f"{self._where} has unknown value type {raw}") from None

    def _get_field_parts(self, orig_offs: int, raw_type: int) -> tuple[int, list, list[int], list]:
        gtype = self._value_type(int(raw_type))
        if gtype == GGUFValueType.ARRAY:  # nested arrays (rare): bound the count before gguf-py loops over it
            itype = self._value_type(int(self._get(orig_offs, np.uint32)[0]))
            n = int(self._get(orig_offs + 4, np.uint64)[0])
            self._claim(self._where, n, _min_value_bytes(itype), orig_offs + 12)
        return super()._get_field_parts(orig_offs, raw_type)

    def _fast_array(
        self, offs: int, raw_type: int, head: list[Any], key: str
    ) -> tuple[int, Any, Any, list] | None:
        if self._value_type(raw_type) != GGUFValueType.ARRAY:
            return None
        raw_itype = self._get(offs, np.uint32)
        alen = self._get(offs + 4, np.uint64)
        itype = self._value_type(int(raw_itype[0]))
        n = int(alen[0])
        start = offs + 12
        base = len(head) + 2
        self._claim(f"metadata array {_short(key)}", n, _min_value_bytes(itype), start)
        if itype == GGUFValueType.STRING:
            size = len(self.data)
            mv = memoryview(self.data)
            order = "little" if self.byte_order == "I" else "big"
            lens = np.empty(n, dtype=np.int64)  # n ≤ bytes left / 8: bounded by the file size
            pos = start
            for k in range(n):  # one pass over the length prefixes; strings have variable size
                if pos + 8 > size:
                    raise GGUFFormatError(f"truncated: string #{k} of metadata array {_short(key)} starts at the end")
                ln = int.from_bytes(mv[pos : pos + 8], order)
                if ln > size - pos - 8:
                    raise GGUFFormatError(
                        f"truncated or corrupt: string #{k} of metadata array {_short(key)} claims {ln} bytes "
                        f"but {size - pos - 8} remain"
                    )
                lens[k] = ln
                pos += 8 + ln
            starts = np.empty(n, dtype=np.int64)
            if n:
                starts[0] = start
                np.cumsum(lens[:-1] + 8, out=starts[1:])
                starts[1:] += start

            def elem(k: int, j: int) -> Any:
                s = int(starts[k])
                return self._get(s, np.uint64) if j == 0 else self._get(s + 8, np.uint8, int(lens[k]))

            def strings(starts: np.ndarray = starts, lens: np.ndarray = lens) -> list[str]:
                return [bytes(mv[s + 8 : s + 8 + ln]).decode("utf-8", errors="replace")
                        for s, ln in zip(starts.tolist(), lens.tolist())]

            self.__dict__.setdefault("_array_getters", {})[key] = strings
            parts = _ArrayParts(head, raw_itype, alen, elem, 2, n)
            return pos - offs, parts, range(base + 1, base + 1 + 2 * n, 2), [GGUFValueType.ARRAY, itype]
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is None:
            return None  # nested arrays: the library's own path (count bounded in _get_field_parts)
        arr = self._get(start, nptype, n)
        self.__dict__.setdefault("_array_getters", {})[key] = arr.tolist

        def elem_s(k: int, j: int) -> Any:
            return arr[k : k + 1]

        parts = _ArrayParts(head, raw_itype, alen, elem_s, 1, n)
        return 12 + int(arr.nbytes), parts, range(base, base + n), [GGUFValueType.ARRAY, itype]

    # -- tensor infos --------------------------------------------------------------------------------------------
    def _build_tensor_info(self, offs: int, count: int) -> tuple[int, list[ReaderField]]:
        self._claim("the tensor count", int(count), _MIN_TENSOR_INFO_BYTES, offs)
        fields = []
        for k in range(int(count)):
            self._where = f"tensor info #{k}"
            name_len = int(self._get(offs, np.uint64)[0])
            self._get(offs + 8, np.uint8, name_len)  # bounds only
            n_dims = int(self._get(offs + 8 + name_len, np.uint32)[0])
            if n_dims > GGML_MAX_DIMS:
                name = _short(bytes(self._get(offs + 8, np.uint8, name_len)).decode("utf-8", "replace"))
                raise GGUFFormatError(f"tensor {name} claims {n_dims} dimensions (at most {GGML_MAX_DIMS})")
            field = self._get_tensor_info_field(offs)
            offs += sum(int(part.nbytes) for part in field.parts)
            fields.append(field)
        return offs, fields

    def _build_tensors(self, start_offs: int, fields: list[ReaderField]) -> None:
        self._where = "tensor infos"
        size = len(self.data)
        for field in fields:
            _name_len, name_data, _n_dims, dims, raw_dtype, offset_tensor = field.parts
            name = _short(str(bytes(name_data), encoding="utf-8"))
            try:
                qtype = GGMLQuantizationType(int(raw_dtype[0]))
            except ValueError:
                raise GGUFFormatError(f"tensor {name} has unknown type {int(raw_dtype[0])}") from None
            shape = [int(d) for d in dims]
            if any(d < 1 or d > MAX_DIM for d in shape):
                raise GGUFFormatError(f"tensor {name} has dimensions {shape}; each must be in [1, 2**40]")
            block, type_size = GGML_QUANT_SIZES[qtype]
            if shape and shape[0] % block:
                raise GGUFFormatError(
                    f"tensor {name} ({qtype.name}) has rows of {shape[0]} elements, not a multiple of its "
                    f"block size {block}"
                )
            n_elems = 1
            for d in shape:
                n_elems *= d
            n_bytes = n_elems * type_size // block
            rel = int(offset_tensor[0])
            if rel % self.alignment:
                raise GGUFFormatError(f"tensor {name} data offset {rel} is not aligned to {self.alignment} bytes")
            end = start_offs + rel + n_bytes
            if end > size:
                raise GGUFFormatError(
                    f"truncated: tensor {name} ({qtype.name} {shape}) ends at byte {end} but the file has {size}"
                )
        super()._build_tensors(start_offs, fields)


def _short(name: str, limit: int = 80) -> str:
    """A key or tensor name as it appears in a message: repr'd (no raw control characters), bounded."""
    r = repr(name)
    return r if len(r) <= limit else r[: limit - 4] + "...'"


def _min_value_bytes(t: GGUFValueType) -> int:
    """Smallest encoding of one value of type t (a string: its 8-byte length; an array: type + length)."""
    if t == GGUFValueType.STRING:
        return 8
    if t == GGUFValueType.ARRAY:
        return 12
    return int(np.dtype(GGUFReader.gguf_scalar_to_np[t]).itemsize)
