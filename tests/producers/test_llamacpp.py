"""llama.cpp as a producer: the pinned source, tokenizers rebuilt from its vocabularies, its converter and quantizer.

The tokenizer checks are against llama.cpp's own data: the ``.inp``/``.out`` pairs written by
``convert_hf_to_gguf_update.py`` from the original HF tokenizers, and the pre-tokenizer hash
table in the vendored converter. Quantization needs the compiled llama-cpp-python and skips
without it.
"""

from __future__ import annotations

import functools
import json
import re

import pytest

from layerbisect.errors import InputError
from layerbisect.producers import llamacpp as L
from layerbisect.producers.vocab import (
    VOCABS,
    cached_tokenizer,
    check_vocab_tests,
    pre_tokenizer_hash,
    tokenizer_info,
    vocab_tests,
)

from .conftest_helpers import cosine


@pytest.fixture(scope="module")
def src() -> L.LlamaCppSource:
    return L.llamacpp_source()


@functools.cache
def _tokenizer(name: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(cached_tokenizer(name) / "tokenizer.json"))


def _converter_hash_table(src: L.LlamaCppSource) -> dict[str, str]:
    """chkhsh → tokenizer.ggml.pre, read from the vendored converter's get_vocab_base_pre."""
    text = (src.root / "conversion" / "base.py").read_text()
    pairs = re.findall(r'if chkhsh == "([0-9a-f]{64})":\s*(?:#[^\n]*\n\s*)*res = "([^"]+)"', text)
    assert len(pairs) > 50, "the converter's hash table moved; update this reader"
    return dict(pairs)


def test_source_is_the_pinned_sdist(src):
    info = json.loads((src.root.parent / "source.json").read_text())
    assert info["sdist_sha256"] == L.SDIST_SHA256 and info["llama_cpp_commit"] == L.LLAMA_CPP_COMMIT
    assert src.converter.is_file() and (src.root / "conversion" / "gemma.py").is_file()
    # The vendored gguf-py is newer than the gguf wheel: it knows the new architectures.
    assert "QWEN35MOE" in (src.gguf_py / "gguf" / "constants.py").read_text()
    for name in VOCABS:
        assert src.vocab_gguf(name).is_file()
    with pytest.raises(InputError, match="no such llama.cpp vocabulary"):
        src.vocab_gguf("nope")


@pytest.mark.parametrize("name", list(VOCABS))
def test_rebuilt_tokenizer_reproduces_llamacpp_test_ids(src, name):
    tok = _tokenizer(name)
    tests = vocab_tests(src.vocab_gguf(name))
    assert len(tests) >= 40, f"{name}: only {len(tests)} test texts"
    bad = check_vocab_tests(tok, tests)
    assert not bad, f"{name}: {len(bad)}/{len(tests)} differ, first {bad[0][0]!r}: want {bad[0][1]} got {bad[0][2]}"


# qwen35: llama.cpp's ggml-vocab-qwen35.gguf holds the Qwen2 tokens and merges (only
# tokenizer.ggml.pre differs), and the check text has no combining marks, so its hash is the
# Qwen2 one; the real Qwen3.5 vocabulary (248k tokens) hashes differently.
@pytest.mark.parametrize("name,pre", [("llama-bpe", "llama-bpe"), ("qwen2", "qwen2"), ("qwen35", "qwen2")])
def test_converter_recognizes_the_pre_tokenizer(src, name, pre):
    from transformers import AutoTokenizer

    table = _converter_hash_table(src)
    h = pre_tokenizer_hash(AutoTokenizer.from_pretrained(cached_tokenizer(name)))  # what the converter runs
    assert table.get(h) == pre, f"{name}: hash {h} maps to {table.get(h)!r}"


def test_sentencepiece_model_reproduces_llama_spm(src):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(cached_tokenizer("llama-spm") / "tokenizer.model"))
    tests = vocab_tests(src.vocab_gguf("llama-spm"))
    bad = [(t, want, sp.encode(t)) for t, want in tests if sp.encode(t) != want]
    assert not bad, f"{len(bad)} differ, first {bad[0]}"


def test_gemma_style_sentencepiece_has_no_dummy_prefix():
    import sentencepiece as spm
    from tokenizers import Tokenizer

    d = cached_tokenizer("llama-spm", add_dummy_prefix=False)
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    tj = Tokenizer.from_file(str(d / "tokenizer.json"))
    for text in ("Hello world", " Hello  world", "The capital of France is", "naïve café 3.14"):
        assert tj.encode(text, add_special_tokens=False).ids == sp.encode(text), text
    assert sp.id_to_piece(sp.encode("Hello")[0]) == "Hello"  # no "▁Hello"
    assert tokenizer_info(d)["size"] == 32000


@pytest.mark.parametrize(
    "name,ids",
    [
        # Facts from specs/architectures-and-producers.md ("The capital of France is").
        ("qwen2", [785, 6722, 315, 9625, 374]),
        ("qwen35", [785, 6722, 315, 9625, 374]),
        ("gemma-4", [2, 818, 5279, 529, 7001, 563]),
        ("llama-bpe", [128000, 791, 6864, 315, 9822, 374]),
    ],
)
def test_known_ids(name, ids):
    assert _tokenizer(name).encode("The capital of France is").ids == ids


def test_convert_failure_is_an_input_error_with_the_log(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"]}))
    out = tmp_path / "x.gguf"
    with pytest.raises(InputError, match=r"convert_hf_to_gguf.py failed \(exit 1.*not supported"):
        L.convert_hf_to_gguf(hf, out)
    assert not out.exists() and not list(tmp_path.glob(".x.gguf.tmp*"))
    assert (tmp_path / "x.gguf.convert.log").is_file()
    with pytest.raises(InputError, match="no config.json"):
        L.convert_hf_to_gguf(tmp_path, out)


def test_converted_gguf_is_cached_with_its_log(tiny_models):
    g = tiny_models["qwen3"]["gguf"]
    assert g.name == "model.gguf" and (g.parent / "convert.log").is_file()
    assert "qwen3" in (g.parent / "convert.log").read_text()
    mtime = g.stat().st_mtime_ns
    assert L.converted_gguf(tiny_models["qwen3"]["hf"]) == g and g.stat().st_mtime_ns == mtime
    existing = tiny_models["qwen3"]["gguf"]
    with pytest.raises(InputError, match="exists"):
        L.convert_hf_to_gguf(tiny_models["qwen3"]["hf"], existing)


# -- quantization: needs the compiled llama-cpp-python ------------------------------------------

needs_llama_cpp = pytest.mark.skipif(L.llama_cpp_available() is not None, reason=str(L.llama_cpp_available()))


@pytest.fixture(scope="module")
def wide_f32(tmp_path_factory):
    """A one-layer model wide enough (256) for K-quant blocks, with llama-spm's 32k vocabulary."""
    from layerbisect.producers.tiny import make_tiny_hf

    hf = make_tiny_hf("mistral", tmp_path_factory.mktemp("wide") / "hf", n_layers=1, hidden=256, vocabulary="auto")
    return L.converted_gguf(hf)


@needs_llama_cpp
def test_llama_quantize_k_quants_read_back_bit_exact(wide_f32, tmp_path):
    import gguf
    import numpy as np

    from layerbisect.references.gguf_dequant import dequantize_reader_tensor
    from layerbisect.references.runner import ReferenceRunner

    q = L.llama_quantize(wide_f32, tmp_path / "q4km.gguf", "Q4_K_M")
    assert (tmp_path / "q4km.gguf.quantize.log").is_file()
    r = gguf.GGUFReader(q)
    types = {t.tensor_type.name for t in r.tensors}
    assert {"Q4_K", "Q6_K"} <= types, types  # Q4_K_M keeps some tensors at Q6_K
    for t in r.tensors:
        ours = dequantize_reader_tensor(t).numpy()
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(ours.shape)
        assert np.array_equal(ours, ref), f"{t.name} ({t.tensor_type.name}) differs from gguf-py"
    ids = [1] + list(range(300, 320))
    a = ReferenceRunner(wide_f32).run(ids, select="logits")["logits"]
    b = ReferenceRunner(q).run(ids, select="logits")["logits"]
    # ~4.5 bits per random Gaussian weight through one layer and a 32k head: measured 0.986.
    assert cosine(a, b) > 0.97


@needs_llama_cpp
def test_llama_quantize_refusals(wide_f32, tmp_path):
    with pytest.raises(InputError, match="importance matrix"):
        L.llama_quantize(wide_f32, tmp_path / "a.gguf", "IQ2_XXS")
    with pytest.raises(InputError, match="not a llama.cpp file type"):
        L.llama_quantize(wide_f32, tmp_path / "a.gguf", "Q7_K")
    q8 = L.llama_quantize(wide_f32, tmp_path / "q8.gguf", "Q8_0")
    with pytest.raises(InputError, match="allow_requantize"):
        L.llama_quantize(q8, tmp_path / "q4.gguf", "Q4_0")
    assert not (tmp_path / "q4.gguf").exists()
    L.llama_quantize(q8, tmp_path / "q4.gguf", "Q4_0", allow_requantize=True)
    with pytest.raises(InputError, match="exists"):
        L.llama_quantize(q8, tmp_path / "q4.gguf", "Q4_0", allow_requantize=True)
