"""Tokenizer tests: the GGUF vocabulary rebuilt must give the ids the model's runtime gives.

Oracles, strongest first:
- llama.cpp itself: the Gemma 3 golden ids below were produced by llama.cpp's
  ``llama_tokenize(add_special=True, parse_special=True)`` on the bundled GGUF.
- sentencepiece (the C++ library): a ModelProto rebuilt from the GGUF vocabulary runs the same
  score-driven BPE as llama.cpp's SPM tokenizer, implemented independently of ours.
- The ``tokenizers`` object a tiny GGUF was written from.
transformers' own GGUF conversion is *not* an oracle for Gemma: it builds a Unigram model over
BPE scores and splits "capital" into "▁c ap it al" (huggingface/transformers#41494), so
test_transformers_gguf_gemma_is_not_llama_cpp only pins where it agrees and where it doesn't.
"""

from __future__ import annotations

import dataclasses
import io
import json
import struct
from pathlib import Path

import gguf
import pytest
from tokenizers import Regex, decoders, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from layerbisect.errors import InputError
from layerbisect.tokenizer import PRE_REGEX, parse_token_ids, tokenizer_from_gguf, tokenizer_from_hf

# ---------------------------------------------------------------------------------------------
# Texts and golden ids
# ---------------------------------------------------------------------------------------------

# From llama.cpp (llama-cpp-cffi 0.4.42, vocab_only load of gemma-3-270m-q4_k_m.gguf).
# fmt: off
GEMMA_GOLDEN = {
    "The capital of France is": [2, 818, 5279, 529, 7001, 563],
    "naïve café — 東京 🤗": [2, 1789, 238527, 560, 33443, 2192, 86459, 223603],
    "In 1984, 3.14159 × 2 = 6.28318": [
        2, 902, 236743, 236770, 236819, 236828, 236812, 236764, 236743, 236800, 236761, 236770, 236812, 236770,
        236810, 236819, 15666, 236743, 236778, 578, 236743, 236825, 236761, 236778, 236828, 236800, 236770, 236828,
    ],
    "   three leading spaces": [2, 139, 19891, 5830, 9952],
    "line one\nline two\n\n\ttabbed": [2, 1257, 886, 107, 1257, 1156, 108, 255968, 4823, 4250],
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n": [
        2, 105, 2364, 107, 2202, 106, 107, 105, 4368, 107,
    ],
    # Mathematical Fraktur is not in the vocabulary: byte fallback; U+200B, U+00A0 likewise partly.
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200b\u00a0x": [
        2, 478, 395, 386, 390, 478, 395, 386, 409, 254865, 478, 395, 386, 398, 255458, 478, 395, 386, 399, 478, 395,
        386, 400, 36504, 432, 398, 236781,
    ],
}
# fmt: on

# Plain text (no control tokens) for the sentencepiece and round-trip checks.
TEXTS = [
    "Hello world! Café déjà vu — 123 😊",
    "def f(x):\n    return x ** 2  # square\n",
    "  two leading, two trailing  ",
    "tabs\tand\t\tmore\t\t\ttabs",
    "Ünïcödé: Ελληνικά, русский, العربية, हिन्दी, 日本語の文章。",
    "numbers 0 12 345 6789 3.14 -2e10 1,000,000",
    "<table><tr><td>cell</td></tr></table>",
    "don't I'll we've THEY'RE",
    "\n\n\nthree newlines then text",
    "a" * 200,
]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def write_gguf(path: Path, model: str, tokens: list[str], types: list[int], **kv) -> Path:
    """A metadata-only GGUF carrying a tokenizer (what llama.cpp's --vocab-only files are)."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_tokenizer_model(model)
    if "pre" in kv:
        w.add_tokenizer_pre(kv["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    if "scores" in kv:
        w.add_token_scores(kv["scores"])
    if "merges" in kv:
        w.add_token_merges(kv["merges"])
    if "bos" in kv:
        w.add_bos_token_id(kv["bos"])
    if "eos" in kv:
        w.add_eos_token_id(kv["eos"])
    if "add_bos" in kv:
        w.add_add_bos_token(kv["add_bos"])
    if "add_space_prefix" in kv:
        w.add_add_space_prefix(kv["add_space_prefix"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def spm_model_proto(tokens, scores, types, *, unk_id, bos_id, eos_id, pad_id, add_dummy_prefix) -> bytes:
    """Serialize a sentencepiece ModelProto by hand (protobuf wire format), so the test needs no protobuf.

    Field numbers from sentencepiece_model.proto: ModelProto{pieces=1, trainer_spec=2,
    normalizer_spec=3}; SentencePiece{piece=1, score=2 (float), type=3};
    TrainerSpec{model_type=3 (BPE=2), vocab_size=4, byte_fallback=35, unk/bos/eos/pad_id=40..43};
    NormalizerSpec{name=1, add_dummy_prefix=3, remove_extra_whitespaces=4, escape_whitespaces=5}.
    """

    def varint(n: int) -> bytes:
        out = bytearray()
        n &= 0xFFFFFFFFFFFFFFFF
        while True:
            b, n = n & 0x7F, n >> 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def ln(field: int, b: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(b)) + b

    def vi(field: int, v: int) -> bytes:
        return varint(field << 3) + varint(v)

    out = bytearray()
    for i, (tok, score, typ) in enumerate(zip(tokens, scores, types, strict=True)):
        typ = 2 if i == unk_id else typ  # sentencepiece insists the unk piece has type UNKNOWN
        if typ == 4:
            # sentencepiece matches user-defined pieces after spaces became ▁; llama.cpp in the raw text.
            tok = tok.replace(" ", "▁")
        out += ln(1, ln(1, tok.encode()) + varint(2 << 3 | 5) + struct.pack("<f", score) + vi(3, typ))
    out += ln(
        2,
        vi(3, 2) + vi(4, len(tokens)) + vi(35, 1) + vi(40, unk_id) + vi(41, bos_id) + vi(42, eos_id) + vi(43, pad_id),
    )
    out += ln(3, ln(1, b"identity") + vi(3, int(add_dummy_prefix)) + vi(4, 0) + vi(5, 1))
    return bytes(out)


CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs away.",
    "Quantized models trade accuracy for memory: 4-bit weights, 8-bit activations, 16-bit accumulators.",
    "def layer(x, w):\n    return x @ w.T  # 2 + 2 = 4, 10 * 10 = 100\n",
    "Café, naïve, façade, über, Ελληνικά, русский, 日本語. It's, we'll, they've, I'd.",
    "  indented line\n\ttabbed line\n\n  numbers 1234567890 and 3.14159 and 2025-06-01",
] * 20


# ---------------------------------------------------------------------------------------------
# Real model: Gemma 3 270M
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma(gemma_gguf, gemma_gguf_reader):
    path = str(gemma_gguf)
    return path, gemma_gguf_reader, tokenizer_from_gguf(gemma_gguf_reader, path)


@pytest.mark.slow
@pytest.mark.parametrize("text", list(GEMMA_GOLDEN), ids=[f"golden{i}" for i in range(len(GEMMA_GOLDEN))])
def test_gemma_matches_llama_cpp(gemma, text):
    _, _, tok = gemma
    got = tok.encode(text)
    want = GEMMA_GOLDEN[text]
    assert got == want, f"{text!r}\n got  {tok.token_strings(got)}\n want {tok.token_strings(want)}"


@pytest.mark.slow
def test_gemma_metadata_and_specials(gemma):
    path, reader, tok = gemma
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.source, tok.vocab_size) == (2, 1, True, "gguf:llama", 262144)
    assert tok.encode("The capital of France is", add_bos=False) == [818, 5279, 529, 7001, 563]
    assert tok.token_strings([2, 818, 5279]) == ["<bos>", "The", "▁capital"]
    # Control tokens are whole tokens even inside words; user-defined ones (runs of spaces) too.
    assert tok.encode("a<end_of_turn>b", add_bos=False) == [236746, 106, 236763]
    assert tok.encode("x    y", add_bos=False)[1] == 140  # "    ": user-defined token 140
    # Cached per file: the second build is the same object.
    assert tokenizer_from_gguf(reader, path) is tok


@pytest.mark.slow
def test_gemma_matches_sentencepiece(gemma):
    import sentencepiece as spm

    path, reader, tok = gemma

    def f(key):
        return reader.fields[key].contents()

    proto = spm_model_proto(
        f("tokenizer.ggml.tokens"),
        f("tokenizer.ggml.scores"),
        f("tokenizer.ggml.token_type"),
        unk_id=3,
        bos_id=2,
        eos_id=1,
        pad_id=0,
        add_dummy_prefix=False,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto)
    # sentencepiece doesn't parse control tokens in text
    texts = TEXTS + [t for t in GEMMA_GOLDEN if "<start_of_turn>" not in t]
    pairs = [(t, tok.encode(t, add_bos=False), sp.encode(t)) for t in texts]
    bad = [(t, a, b) for t, a, b in pairs if a != b]
    assert not bad, (
        "\n".join(f"{t!r}\n ours {tok.token_strings(a)}\n spm  {tok.token_strings(b)}" for t, a, b in bad[:3])
        + f"\n({len(bad)}/{len(texts)} texts differ)"
    )


@pytest.mark.slow
def test_gemma_decode_round_trips(gemma):
    _, _, tok = gemma
    for text in TEXTS + list(GEMMA_GOLDEN):
        assert tok.decode(tok.encode(text, add_bos=False)) == text
    assert tok.decode(tok.encode("hi")) == "<bos>hi"  # specials are shown, not skipped


@pytest.mark.slow
@pytest.mark.long  # transformers' own GGUF->tokenizers conversion: ~30 s idle, minutes on 2 busy cores
def test_transformers_gguf_gemma_is_not_llama_cpp(gemma):
    """transformers' GGUF->tokenizers conversion (~30 s) agrees with us on the special-token
    structure but not on segmentation (Unigram over BPE scores). If this starts failing because
    the two agree, transformers fixed its converter: turn it into an equality test."""
    transformers = pytest.importorskip("transformers")
    path, _, tok = gemma
    p = Path(path)
    ht = transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    ref = ht("The capital of France is", add_special_tokens=False)["input_ids"]
    assert ref != tok.encode("The capital of France is", add_bos=False)
    assert ht.convert_ids_to_tokens(ref)[:3] == ["The", "▁c", "ap"]
    # Where no word has a choice of segmentation the two agree: specials, newlines, digits, spaces.
    for text in ["<start_of_turn>\n<end_of_turn>\n", "1 2 3\n\n4", "   "]:
        assert ht(text, add_special_tokens=False)["input_ids"] == tok.encode(text, add_bos=False), text


# ---------------------------------------------------------------------------------------------
# Tiny "gpt2" (byte-level BPE) GGUFs
# ---------------------------------------------------------------------------------------------

BPE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def train_byte_level_bpe(pre: str) -> HFTokenizer:
    regexes, ignore_merges = PRE_REGEX[pre]
    regexes = (regexes,) if isinstance(regexes, str) else regexes
    hf = HFTokenizer(BPE(ignore_merges=ignore_merges))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    hf.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=500,
        special_tokens=BPE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(CORPUS, trainer)
    return hf


def bpe_gguf(tmp_path: Path, hf: HFTokenizer, pre: str, name: str = "tiny-bpe.gguf") -> Path:
    vocab = hf.get_vocab(with_added_tokens=True)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    merges = json.loads(hf.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    types = [3 if t in BPE_SPECIALS else 1 for t in tokens]
    return write_gguf(
        tmp_path / name,
        "gpt2",
        tokens,
        types,
        merges=merges,
        pre=pre,
        bos=vocab["<|im_start|>"],
        eos=vocab["<|endoftext|>"],
        add_bos=False,
    )


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "gpt-2", "default", "command-r"])
def test_tiny_bpe_gguf_matches_source(tmp_path, pre):
    hf = train_byte_level_bpe(pre)
    path = bpe_gguf(tmp_path, hf, pre)
    tok = tokenizer_from_gguf(gguf.GGUFReader(str(path)), str(path))
    assert tok.source == "gguf:gpt2" and tok.vocab_size == hf.get_vocab_size()
    for text in TEXTS + ["<|im_start|>user\nhi<|im_end|>\n"]:
        want = hf.encode(text, add_special_tokens=False).ids
        assert tok.encode(text) == want, f"{text!r}: {tok.token_strings(tok.encode(text))} vs {hf.encode(text).tokens}"
        assert tok.decode(tok.encode(text)) == text
    bos = hf.token_to_id("<|im_start|>")
    assert tok.encode("hi", add_bos=True)[0] == bos and tok.encode("hi")[0] != bos
    # Special tokens are single ids, not split into "<", "|", ...
    assert tok.encode("x<|im_end|>y") == [hf.token_to_id("x"), hf.token_to_id("<|im_end|>"), hf.token_to_id("y")]


def test_bpe_pre_tokenizers_really_differ(tmp_path):
    """qwen2 splits digits one by one, llama3 in groups of three: the `pre` value matters."""
    hf = train_byte_level_bpe("gpt-2")  # one vocabulary, read with two `pre` values
    q = tokenizer_from_gguf(gguf.GGUFReader(str(bpe_gguf(tmp_path, hf, "qwen2", "q.gguf"))))
    l3 = tokenizer_from_gguf(gguf.GGUFReader(str(bpe_gguf(tmp_path, hf, "llama-bpe", "l.gguf"))))
    assert q.token_strings(q.encode("1234567890")) == list("1234567890")
    assert "".join(l3.token_strings(l3.encode("1234567890"))) == "1234567890"
    assert len(l3.encode("1234567890")) < 10


def test_unknown_pre_is_input_error(tmp_path):
    path = bpe_gguf(tmp_path, train_byte_level_bpe("gpt-2"), "no-such-pre")
    with pytest.raises(InputError, match="no-such-pre") as e:
        tokenizer_from_gguf(gguf.GGUFReader(str(path)), str(path))
    assert e.value.where == str(path)


def test_unknown_tokenizer_model_is_input_error(tmp_path):
    path = write_gguf(tmp_path / "bert.gguf", "bert", ["[PAD]", "[UNK]", "a"], [3, 2, 1])
    with pytest.raises(InputError, match="'bert' is not supported") as e:
        tokenizer_from_gguf(gguf.GGUFReader(str(path)), str(path))
    assert e.value.where == str(path)
    # The file name is also found without the path argument (from the reader's memmap).
    with pytest.raises(InputError, match="bert.gguf"):
        tokenizer_from_gguf(gguf.GGUFReader(str(path)))


# ---------------------------------------------------------------------------------------------
# Tiny "llama" (SentencePiece BPE) GGUF, checked against sentencepiece itself
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_spm():
    spm = pytest.importorskip("sentencepiece")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        model_type="bpe",
        vocab_size=500,
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        control_symbols=["<ctl>"],
        minloglevel=2,
        num_threads=1,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    n = sp.get_piece_size()

    def typ(i: int) -> int:
        for t, pred in ((2, sp.is_unknown), (3, sp.is_control), (6, sp.is_byte), (5, sp.is_unused)):
            if pred(i):
                return t
        return 1

    tokens = [sp.id_to_piece(i) for i in range(n)]
    return sp, tokens, [sp.get_score(i) for i in range(n)], [typ(i) for i in range(n)]


def test_tiny_spm_gguf_matches_sentencepiece(tmp_path, tiny_spm):
    sp, tokens, scores, types = tiny_spm
    path = write_gguf(
        tmp_path / "tiny-spm.gguf",
        "llama",
        tokens,
        types,
        scores=scores,
        bos=sp.bos_id(),
        eos=sp.eos_id(),
        add_space_prefix=True,
    )  # add_bos absent: SPM default is True
    tok = tokenizer_from_gguf(gguf.GGUFReader(str(path)), str(path))
    assert (tok.source, tok.add_bos, tok.bos_id, tok.vocab_size) == ("gguf:llama", True, sp.bos_id(), len(tokens))
    # 東京🤗 and \n are not in this vocabulary: byte fallback.
    for text in TEXTS + ["The quick brown fox", " leading", "東京🤗", "x\ny"]:
        want = sp.encode(text)
        got = tok.encode(text, add_bos=False)
        assert got == want, f"{text!r}: {tok.token_strings(got)} vs {sp.encode(text, out_type=str)}"
        assert tok.encode(text) == [sp.bos_id(), *want]
        assert tok.decode(want) == text
    # Control tokens match whole; the text after one gets its own space prefix, as in llama.cpp.
    ctl = sp.piece_to_id("<ctl>")
    assert tok.encode("fox<ctl>dog", add_bos=False) == [*sp.encode("fox"), ctl, *sp.encode("dog")]


# ---------------------------------------------------------------------------------------------
# tokenizer.json, fingerprint
# ---------------------------------------------------------------------------------------------


def test_tokenizer_from_hf_and_fingerprint(tmp_path):
    hf = train_byte_level_bpe("qwen2")
    d = tmp_path / "model"
    d.mkdir()
    hf.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|im_start|>", "eos_token": {"content": "<|endoftext|>"}, "add_bos_token": False})
    )
    from_dir, from_file = tokenizer_from_hf(d), tokenizer_from_hf(d / "tokenizer.json")
    assert from_dir.bos_id == hf.token_to_id("<|im_start|>") and from_dir.eos_id == hf.token_to_id("<|endoftext|>")
    assert from_dir.add_bos is False and from_dir.source == "tokenizer.json"
    text = "Hello world! <|im_end|> 12345"
    assert from_dir.encode(text) == from_file.encode(text) == hf.encode(text, add_special_tokens=False).ids
    # Same vocabulary and specials written to a GGUF: same fingerprint; one token changed: different.
    gg = tokenizer_from_gguf(gguf.GGUFReader(str(bpe_gguf(tmp_path, hf, "qwen2"))))
    assert gg.fingerprint() == from_dir.fingerprint()
    assert gg.encode(text) == from_dir.encode(text)
    vocab = hf.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    tokens[-1] = tokens[-1] + "X"
    other = write_gguf(
        tmp_path / "other.gguf",
        "gpt2",
        tokens,
        [3 if t in BPE_SPECIALS else 1 for t in tokens],
        merges=["a b"],
        pre="qwen2",
        bos=vocab["<|im_start|>"],
        eos=vocab["<|endoftext|>"],
    )
    assert tokenizer_from_gguf(gguf.GGUFReader(str(other))).fingerprint() != gg.fingerprint()


def test_converter_padding_is_not_a_vocabulary_difference(tiny_models):
    """llama.cpp's converter pads a Qwen vocabulary (151646 strings in tokenizer.json) to the embedding's
    151936 rows with "[PAD{i}]": same fingerprint; a real string changed past the tokenizer's end is not."""
    m = tiny_models["qwen3"]
    from layerbisect.references.fast_reader import FastGGUFReader

    gg = tokenizer_from_gguf(FastGGUFReader(m["gguf"], "r"), str(m["gguf"]))
    hf = tokenizer_from_hf(m["hf"])
    n = gg.vocab_size
    assert n > hf.vocab_size and gg.token_strings([n - 1]) == [f"[PAD{n - 1}]"], "no padding: test moot"
    assert gg.fingerprint() == hf.fingerprint()
    changed = dataclasses.replace(gg, _vocab=[*gg._vocab[: n - 1], "[PAD0]"])  # not the filler of id n-1
    assert changed.fingerprint() != hf.fingerprint()


def test_tokenizer_from_hf_reads_config_json_and_post_processor(tmp_path):
    from tokenizers import processors

    hf = train_byte_level_bpe("qwen2")
    bos = hf.token_to_id("<|im_start|>")
    hf.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": [0, 2]}))
    tok = tokenizer_from_hf(tmp_path)
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (bos, 0, True)
    assert tok.encode("hi") == [bos, *hf.encode("hi", add_special_tokens=False).ids]  # BOS once, not twice


def test_tokenizer_from_hf_bad_input(tmp_path):
    with pytest.raises(InputError, match="no tokenizer.json"):
        tokenizer_from_hf(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="tokenizer.json"):
        tokenizer_from_hf(tmp_path)


# ---------------------------------------------------------------------------------------------
# parse_token_ids
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "s, ids",
    [
        ("2,818,5279", [2, 818, 5279]),
        (" 2, 818 ,5279 ", [2, 818, 5279]),
        ("2 818 5279", [2, 818, 5279]),
        ("[2, 818]", [2, 818]),
        ("0", [0]),
    ],
    ids=["commas", "spaces-around", "spaces", "brackets", "zero"],
)
def test_parse_token_ids(s, ids):
    assert parse_token_ids(s) == ids


@pytest.mark.parametrize(
    "s",
    ["", "  ", "2,,3", ",2", "2,x", "-1", "1.5", "0x10", "[]", "²"],
    ids=[
        "empty",
        "blank",
        "double-comma",
        "leading-comma",
        "word",
        "negative",
        "float",
        "hex",
        "empty-list",
        "superscript",
    ],
)
def test_parse_token_ids_rejects(s):
    with pytest.raises(InputError):
        parse_token_ids(s)


@pytest.mark.slow
def test_gemma4_matches_llama_cpp_vocab_tests():
    """Tokenizer model ``gemma4`` (BPE over ▁-for-space text with byte fallback) against the ids llama.cpp ships
    beside its ggml-vocab-gemma-4.gguf (``.inp``/``.out``: what the original HF tokenizer gave)."""
    pytest.importorskip("layerbisect.producers.llamacpp", reason="llama.cpp producers not installed")
    from layerbisect.producers.llamacpp import llamacpp_source
    from layerbisect.producers.vocab import vocab_tests
    from layerbisect.references.fast_reader import FastGGUFReader

    path = llamacpp_source().vocab_gguf("gemma-4")
    tok = tokenizer_from_gguf(FastGGUFReader(path, "r"), str(path))
    assert tok.source == "gguf:gemma4" and tok.add_bos and tok.bos_id == 2
    tests = vocab_tests(path)
    assert len(tests) > 30
    bad = [(text, want, tok.encode(text, add_bos=False)) for text, want in tests
           if tok.encode(text, add_bos=False) != want]
    assert not bad, f"{len(bad)} of {len(tests)} differ, first: {bad[0]}"
    assert tok.encode("The capital of France is") == [2, 818, 5279, 529, 7001, 563]
    assert tok.decode(tok.encode("Hello  world\n\n  ok", add_bos=False)) == "Hello  world\n\n  ok"
