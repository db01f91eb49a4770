"""FastGGUFReader must expose exactly what gguf.GGUFReader does: same fields, contents, parts, tensors."""

from __future__ import annotations

import pytest
from gguf import GGUFReader

from layerbisect.references.fast_reader import FastGGUFReader


def _assert_same(path):
    a, b = FastGGUFReader(path), GGUFReader(path)
    assert list(a.fields) == list(b.fields)
    for k in b.fields:
        fa, fb = a.fields[k], b.fields[k]
        assert fa.contents() == fb.contents(), k
        assert list(fa.data) == list(fb.data) and fa.types == fb.types and fa.offset == fb.offset, k
        assert len(fa.parts) == len(fb.parts), k
        for i in {0, 1, 2, 3, 4, 5, len(fb.parts) // 2, len(fb.parts) - 1}:
            if i < len(fb.parts):
                assert bytes(fa.parts[i]) == bytes(fb.parts[i]), (k, i)
        if fb.data and len(fb.data) > 1:
            assert fa.contents(1) == fb.contents(1), k
    key = lambda t: (t.name, t.data_offset, t.n_bytes, t.tensor_type, list(t.shape))  # noqa: E731
    assert [key(t) for t in a.tensors] == [key(t) for t in b.tensors]


# One SentencePiece vocabulary (scores) and one byte-level BPE (merges); llama's 128k-token BPE adds
# a minute of gguf-py parsing and nothing new.
@pytest.mark.parametrize("arch", ["gemma3", "qwen2"])
def test_tiny_models_with_tokenizers(tiny_models, arch):
    _assert_same(tiny_models[arch]["gguf"])


@pytest.mark.slow
def test_real_gemma(gemma_gguf):
    _assert_same(gemma_gguf)
