"""``gguf.GGUFReader`` without the per-element cost of large metadata arrays.

gguf-py builds one numpy view per element of every metadata array while parsing the header:
for a 262k-token vocabulary (tokens, scores, token types) that is ~800k views and 10–30 s
before a single tensor is touched. This subclass keeps the reader's data model — a
``ReaderField`` whose ``parts[data[k]]`` is element k, so ``field.contents()`` and every
consumer work unchanged — but makes ``parts`` a lazy sequence: a scalar array is one view,
a string array is one pass over the length prefixes, and element views are cut on access.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField


class _ArrayParts(Sequence):
    """parts = head + [raw_itype, alen] + per-element views, materialized on access."""

    def __init__(self, head: list[Any], raw_itype: np.ndarray, alen: np.ndarray, elem: Any, n_elem_parts: int, n: int):
        self.head = list(head) + [raw_itype, alen]
        self.elem = elem  # (k, j) -> view of part j of element k
        self.whole: Any = None  # () -> every element decoded at once, as ``ReaderField.contents()`` returns them
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


class _FastField(ReaderField):
    """A ``ReaderField`` of an array whose whole ``contents()`` is decoded in one pass (``whole``), not per element."""

    whole: Any = None

    def contents(self, index_or_slice: int | slice = slice(None)) -> Any:
        if self.whole is not None and index_or_slice == slice(None):
            return self.whole()
        return super().contents(index_or_slice)


class FastGGUFReader(GGUFReader):
    def _build_fields(self, offs: int, count: int) -> int:
        for _ in range(count):
            orig_offs = offs
            kv_klen, kv_kdata = self._get_str(offs)
            offs += int(kv_klen.nbytes + kv_kdata.nbytes)
            raw_kv_type = self._get(offs, np.uint32)
            offs += int(raw_kv_type.nbytes)
            head = [kv_klen, kv_kdata, raw_kv_type]
            fast = self._fast_array(offs, int(raw_kv_type[0]), head)
            if fast is None:
                size, fparts, fidxs, ftypes = self._get_field_parts(offs, raw_kv_type[0])
                parts: Any = head + fparts
                idxs = [i + len(head) for i in fidxs]
            else:
                size, parts, idxs, ftypes = fast
            field = _FastField(orig_offs, str(bytes(kv_kdata), encoding="utf-8"), parts, idxs, ftypes)
            field.whole = getattr(parts, "whole", None)
            self._push_field(field, skip_sum=True)
            offs += size
        return offs

    def _fast_array(self, offs: int, raw_type: int, head: list[Any]) -> tuple[int, Any, list[int], list] | None:
        if GGUFValueType(raw_type) != GGUFValueType.ARRAY:
            return None
        raw_itype = self._get(offs, np.uint32)
        alen = self._get(offs + 4, np.uint64)
        itype = GGUFValueType(int(raw_itype[0]))
        n = int(alen[0])
        start = offs + 12
        base = len(head) + 2
        if itype == GGUFValueType.STRING:
            buf = self.data
            lens = np.empty(n, dtype=np.int64)
            pos = start
            mv = memoryview(buf)
            order = "little" if self.byte_order == "I" else "big"
            for k in range(n):  # one pass over the length prefixes; strings have variable size
                ln = int.from_bytes(mv[pos : pos + 8], order)
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

            parts = _ArrayParts(head, raw_itype, alen, elem, 2, n)

            def whole() -> list[str]:  # every string from one copy of the region: no view per element
                raw = bytes(mv[start:pos])
                offs0 = (starts - start + 8).tolist()
                return [raw[o : o + ln].decode("utf-8") for o, ln in zip(offs0, lens.tolist())]

            parts.whole = whole
            idxs = [base + 2 * k + 1 for k in range(n)]
            return pos - offs, parts, idxs, [GGUFValueType.ARRAY, itype]
        nptype = self.gguf_scalar_to_np.get(itype)
        if nptype is None:
            return None  # nested arrays: the library's own path
        arr = self._get(start, nptype, n)

        def elem_s(k: int, j: int) -> Any:
            return arr[k : k + 1]

        parts = _ArrayParts(head, raw_itype, alen, elem_s, 1, n)
        parts.whole = arr.tolist
        idxs = list(range(base, base + n))
        return 12 + int(arr.nbytes), parts, idxs, [GGUFValueType.ARRAY, itype]
