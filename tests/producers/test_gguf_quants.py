"""GGUF fixtures for GGUF-vs-GGUF: a gguf-py round trip is byte-identical, a planted fault changes exactly its
bytes, llama.cpp's quantizer honours --tensor-type overrides."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from layerbisect.errors import InputError
from layerbisect.producers.gguf_quants import Q4_K_SCALES, corrupt_q4k_scales, quantized_gguf, rewrite_gguf


def _same(a: gguf.GGUFReader, b: gguf.GGUFReader) -> None:
    assert [(t.name, t.tensor_type) for t in a.tensors] == [(t.name, t.tensor_type) for t in b.tensors]
    keys = [k for k in a.fields if not k.startswith("GGUF.")]
    assert keys == [k for k in b.fields if not k.startswith("GGUF.")]
    for k in keys:
        assert a.fields[k].contents() == b.fields[k].contents(), k


def test_round_trip_and_planted_fault(llamacpp_tiny, tmp_path) -> None:
    src = llamacpp_tiny["Q4_K_M"]
    copy = tmp_path / "copy.gguf"
    assert rewrite_gguf(src, copy) == []
    a, b = gguf.GGUFReader(src), gguf.GGUFReader(copy)
    _same(a, b)
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a.tensors, b.tensors, strict=True))

    bad = tmp_path / "bad.gguf"
    assert corrupt_q4k_scales(src, bad, "blk.0.attn_q.weight", [(7, 0)]) == [(7, 0)]
    c = gguf.GGUFReader(bad)
    _same(a, c)
    for x, y in zip(a.tensors, c.tensors, strict=True):
        if x.name != "blk.0.attn_q.weight":
            assert np.array_equal(x.data, y.data), x.name
            continue
        diff = np.argwhere(x.data != y.data)
        assert [tuple(d) for d in diff] == [(7, i) for i in range(Q4_K_SCALES.start, Q4_K_SCALES.stop)]
        assert np.all((x.data[7, Q4_K_SCALES] ^ y.data[7, Q4_K_SCALES]) == 0x20)
    with pytest.raises(InputError, match="not Q4_K"):
        corrupt_q4k_scales(src, tmp_path / "x.gguf", "blk.1.ffn_down.weight")  # Q6_K in Q4_K_M
    with pytest.raises(InputError, match="no block"):
        corrupt_q4k_scales(src, tmp_path / "y.gguf", "blk.0.attn_q.weight", [(0, 5)])


def test_tensor_type_overrides(llamacpp_tiny) -> None:
    p = quantized_gguf(llamacpp_tiny["F32"], "Q2_K", tensor_types={r"blk\.0\.ffn_down": "Q4_K", "attn_q": "Q8_0"})
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(p).tensors}
    assert types["blk.0.ffn_down.weight"] == "Q4_K" and types["blk.1.ffn_down.weight"] == "Q3_K"
    assert types["blk.0.attn_q.weight"] == types["blk.1.attn_q.weight"] == "Q8_0"
    assert types["blk.0.ffn_up.weight"] == "Q2_K"
    with pytest.raises(InputError, match="not a GGML type"):
        quantized_gguf(llamacpp_tiny["F32"], "Q2_K", tensor_types={"attn_q": "Q9_9"})
