"""Planted GGUF faults are exact: the scaled tensor dequantizes to factor x the original; the rest is unchanged."""

from __future__ import annotations

import pytest

from layerbisect.errors import InputError
from layerbisect.producers.gguf_edit import scale_tensor
from layerbisect.producers.llamacpp import llama_cpp_available
from layerbisect.references.fast_reader import FastGGUFReader
from layerbisect.references.gguf_dequant import dequantize_reader_tensor


def _tensors(path):
    # FastGGUFReader: gguf-py's reader takes tens of seconds over a 32k-152k-token vocabulary.
    return {t.name: t for t in FastGGUFReader(path).tensors}


def _check(src, dst, name, factor):
    a_all, b_all = _tensors(src), _tensors(dst)
    a, b = dequantize_reader_tensor(a_all[name]), dequantize_reader_tensor(b_all[name])
    assert (b == factor * a).all(), f"{name}: max diff {(b - factor * a).abs().max():.3g}"
    for n, t in a_all.items():
        if n != name:
            assert (b_all[n].data == t.data).all(), n


def test_scale_f32_tensor(tiny_models, tmp_path):
    src = tiny_models["qwen2"]["gguf"]
    out = scale_tensor(src, tmp_path / "x.gguf", "blk.1.ffn_down.weight", 4.0)
    _check(src, out, "blk.1.ffn_down.weight", 4.0)
    with pytest.raises(InputError, match="exists"):
        scale_tensor(src, out, "blk.1.ffn_down.weight", 4.0)
    with pytest.raises(InputError, match="has no tensor"):
        scale_tensor(src, tmp_path / "y.gguf", "blk.9.nope.weight", 2.0)
    assert not (tmp_path / "y.gguf").exists()


@pytest.mark.skipif(llama_cpp_available() is not None, reason=str(llama_cpp_available()))
@pytest.mark.parametrize("ftype,kinds", [("Q8_0", {"Q8_0"}), ("Q4_K_M", {"Q4_K", "Q6_K"})])
def test_scale_block_quantized_tensor(tmp_path_factory, tmp_path, ftype, kinds):
    from layerbisect.producers.llamacpp import converted_gguf, llama_quantize
    from layerbisect.producers.tiny import make_tiny_hf

    # Rows of 256: real K-quant blocks (narrower rows fall back to legacy types).
    hf = make_tiny_hf("mistral", tmp_path_factory.mktemp("w") / "hf", n_layers=1, hidden=256, vocabulary="auto")
    q = llama_quantize(converted_gguf(hf), tmp_path / "q.gguf", ftype)
    seen = set()
    for t in FastGGUFReader(q).tensors:
        if t.tensor_type.name in kinds - seen:
            seen.add(t.tensor_type.name)
            out = scale_tensor(q, tmp_path / f"{t.name}.gguf", t.name, 0.25)
            _check(q, out, t.name, 0.25)
    assert seen == kinds
