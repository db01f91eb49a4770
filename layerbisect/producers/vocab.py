"""HF tokenizers rebuilt from llama.cpp's vocab-only GGUFs, so tiny models carry real vocabularies.

Why: llama.cpp's ``convert_hf_to_gguf.py`` does not accept any tokenizer. For byte-level BPE
it encodes a fixed check text (``chktxt`` in ``get_vocab_base_pre``) with the model's own
``AutoTokenizer``, hashes the ids and looks the hash up in a table of known pre-tokenizers;
an unknown hash stops the conversion. Gemma 2 wants a SentencePiece ``tokenizer.model``.
A tiny random model converted by the real converter therefore needs a tokenizer that *is*
a real one, id for id. llama.cpp ships the vocabularies (``models/ggml-vocab-*.gguf``) and,
beside most of them, test texts (``.inp``) with the ids the original HF tokenizer gave
(``.out``, ``encode(text, add_special_tokens=False)``, written by
``convert_hf_to_gguf_update.py``). We rebuild the HF tokenizer from the GGUF with the
``tokenizers`` library and check it against both: the ``.inp``/``.out`` pairs
(:func:`check_vocab_tests`) and the converter's hash (:func:`pre_tokenizer_hash`, which must
map to the vocabulary's ``tokenizer.ggml.pre``).

What each vocabulary becomes (the pipelines are those of the original tokenizer.json files):

``llama-bpe`` (Llama 3; used for llama)
    byte-level BPE, ``ignore_merges``; pre-tokenizer ``Split(llama3 regex, isolated)`` then
    ``ByteLevel(use_regex=False)``; post-processor prepends ``<|begin_of_text|>`` (the
    converter's hash includes it: ``AutoTokenizer.encode`` adds special tokens).
``qwen2`` (Qwen2/2.5/3, Qwen3-MoE) and ``qwen35`` (Qwen3.5/3.6)
    byte-level BPE with NFC normalization and the Qwen split regex (one digit per piece;
    Qwen3.5's adds ``\\p{M}`` to letters); no BOS. The ``qwen35`` GGUF holds the same tokens
    and merges as ``qwen2``; only ``tokenizer.ggml.pre`` and the regex differ.
``gemma-4`` (Gemma 4, tokenizer model ``gemma4``)
    BPE with byte fallback over text whose spaces became ``▁`` (no word pre-splitting),
    ``<bos>`` prepended. The converter reads it through ``gguf.LlamaHfVocab`` (BPE with
    ``byte_fallback`` and a ``Sequence`` decoder), not through the hash table.
``llama-spm`` (Llama 2 SentencePiece; used for mistral, gemma2, gemma3)
    a SentencePiece ``ModelProto`` (``tokenizer.model``) built from the GGUF's pieces, scores
    and types with the ``sentencepiece`` package's protobuf (model type BPE, byte fallback),
    plus the equivalent tokenizer.json (BPE whose merge ranks are the piece scores, byte
    fallback). ``add_dummy_prefix`` is the Llama setting by default; Gemma tokenizers have it
    off, so Gemma tiny models get ``add_dummy_prefix=False``, which is also what the Gemma 2/3
    converters write (``add_space_prefix = False``) so llama.cpp and HF agree.
    Gemma 2/3's own 262k-token vocabulary is not among llama.cpp's vocab files; the same
    route works on any SentencePiece-type GGUF (:func:`write_tokenizer` takes a path), e.g.
    the bundled Gemma 3 270M, at 8x the embedding size.

Token types map one to one (GGUF 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
6 byte; SentencePiece uses the same numbers): control tokens become special added tokens,
user-defined ones non-special added tokens (both matched in the raw text, ``normalized=False``).
Unused ``[PAD{i}]`` filler rows at the end of the Qwen vocabularies are left out of the
tokenizer; ``vocab_size`` (the embedding rows) is still the GGUF's token count, and the
converter writes those rows back as ``[PAD{i}]``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from layerbisect.errors import InputError
from layerbisect.producers.cache import build_atomic, cache_dir, options_key

# GGUF / SentencePiece token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer regexes as the original tokenizer.json files write them (llama.cpp's
# llama-vocab.cpp quotes them as "original regex from tokenizer.json").
_LLAMA3_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35_RE = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The converter's check text, copied from conversion/base.py get_vocab_base_pre (a fixed string
# in llama.cpp; the test that runs the vendored converter would catch a change).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)


@dataclass(frozen=True)
class VocabSpec:
    """How one llama.cpp vocabulary becomes a HF tokenizer."""

    name: str  # models/ggml-vocab-{name}.gguf
    kind: str  # "byte_bpe" | "spm_bpe" (▁ for space, byte fallback) | "sentencepiece"
    regex: str | None = None
    nfc: bool = False
    ignore_merges: bool = False
    add_bos: bool = False
    used_by: tuple[str, ...] = ()  # HF model_types this vocabulary is the tiny-model default for


VOCABS: dict[str, VocabSpec] = {
    "llama-bpe": VocabSpec("llama-bpe", "byte_bpe", _LLAMA3_RE, ignore_merges=True, add_bos=True,
                           used_by=("llama",)),
    "qwen2": VocabSpec("qwen2", "byte_bpe", _QWEN2_RE, nfc=True, used_by=("qwen2", "qwen3", "qwen3_moe")),
    "qwen35": VocabSpec("qwen35", "byte_bpe", _QWEN35_RE,
                        used_by=("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next")),
    "gemma-4": VocabSpec("gemma-4", "spm_bpe", add_bos=True, used_by=("gemma4", "gemma4_text")),
    "llama-spm": VocabSpec("llama-spm", "sentencepiece", add_bos=True,
                           used_by=("mistral", "gemma2", "gemma3", "gemma3_text")),
}


def vocab_for_model_type(model_type: str) -> str:
    """The llama.cpp vocabulary a tiny model of HF ``model_type`` gets (see the module notes)."""
    for spec in VOCABS.values():
        if model_type in spec.used_by:
            return spec.name
    raise InputError(model_type, f"no default vocabulary for this model_type (vocabularies: {', '.join(VOCABS)})")


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer part of a vocab GGUF."""

    path: Path
    model: str  # tokenizer.ggml.model
    pre: str | None
    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    bos_id: int | None
    eos_id: int | None
    unk_id: int | None
    pad_id: int | None

    @property
    def size(self) -> int:
        return len(self.tokens)


def read_vocab(path: str | Path) -> GGUFVocab:
    """Read ``tokenizer.ggml.*`` from a GGUF (vocab-only or a whole model).

    A direct walk over the metadata section (GGUF spec: header, then key/value pairs), decoding
    only the ``tokenizer.ggml.*`` values: gguf-py's reader builds a numpy view per array element,
    over a minute for a 262k-token vocabulary on a busy CPU; this takes well under a second.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(p, "vocabulary GGUF not found")
    kv = _read_tokenizer_kv(p)
    tokens = kv.get("tokenizer.ggml.tokens")
    if not tokens:
        raise InputError(p, "no tokenizer.ggml.tokens: not a vocabulary")
    return GGUFVocab(
        path=p,
        model=kv.get("tokenizer.ggml.model"),
        pre=kv.get("tokenizer.ggml.pre"),
        tokens=list(tokens),
        types=[int(t) for t in kv.get("tokenizer.ggml.token_type", [NORMAL] * len(tokens))],
        scores=None if "tokenizer.ggml.scores" not in kv else [float(x) for x in kv["tokenizer.ggml.scores"]],
        merges=kv.get("tokenizer.ggml.merges"),
        bos_id=kv.get("tokenizer.ggml.bos_token_id"),
        eos_id=kv.get("tokenizer.ggml.eos_token_id"),
        unk_id=kv.get("tokenizer.ggml.unknown_token_id"),
        pad_id=kv.get("tokenizer.ggml.padding_token_id"),
    )


# GGUF value types (spec: gguf.md, "GGUFValueType"): numpy dtype of the scalar ones.
_SCALAR = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
           12: "<f8"}
_STRING, _ARRAY = 8, 9


def _read_tokenizer_kv(path: Path) -> dict[str, Any]:
    import mmap

    import numpy as np

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            if bytes(buf[:4]) != b"GGUF":
                raise InputError(path, "not a GGUF file (bad magic)")
            version = int.from_bytes(buf[4:8], "little")
            if version < 2:
                raise InputError(path, f"GGUF version {version} is too old")
            n_kv = int.from_bytes(buf[16:24], "little")
            off = 24
            out: dict[str, Any] = {}

            def u64(o: int) -> int:
                return int.from_bytes(buf[o : o + 8], "little")

            def string(o: int) -> tuple[str, int]:
                n = u64(o)
                return bytes(buf[o + 8 : o + 8 + n]).decode("utf-8", errors="replace"), o + 8 + n

            def value(o: int, vtype: int, keep: bool) -> tuple[Any, int]:
                if vtype in _SCALAR:
                    dt = np.dtype(_SCALAR[vtype])
                    v = np.frombuffer(buf, dtype=dt, count=1, offset=o)[0].item() if keep else None
                    return (bool(v) if vtype == 7 and keep else v), o + dt.itemsize
                if vtype == _STRING:
                    s, o2 = string(o)
                    return (s if keep else None), o2
                if vtype == _ARRAY:
                    itype = int.from_bytes(buf[o : o + 4], "little")
                    n = u64(o + 4)
                    o += 12
                    if itype in _SCALAR:
                        dt = np.dtype(_SCALAR[itype])
                        arr = np.frombuffer(buf, dtype=dt, count=n, offset=o).tolist() if keep else None
                        return arr, o + dt.itemsize * n
                    items = []
                    for _ in range(n):
                        v, o = value(o, itype, keep)
                        if keep:
                            items.append(v)
                    return (items if keep else None), o
                raise InputError(path, f"unknown GGUF value type {vtype} in the metadata")

            for _ in range(n_kv):
                key, off = string(off)
                vtype = int.from_bytes(buf[off : off + 4], "little")
                val, off = value(off + 4, vtype, key.startswith("tokenizer.ggml."))
                if val is not None:
                    out[key] = val
            return out
        finally:
            buf.release()


# -- building ------------------------------------------------------------------------------


def _is_filler(tok: str, typ: int) -> bool:
    # The converter's own padding rows ("[PAD151646]"), typed unused or user-defined.
    return typ in (UNUSED, USER_DEFINED) and tok.startswith("[PAD") and tok.endswith("]")


def _added(v: GGUFVocab) -> tuple[list[Any], list[Any]]:
    from tokenizers import AddedToken

    special, plain = [], []
    for i, (tok, typ) in enumerate(zip(v.tokens, v.types)):
        if _is_filler(tok, typ):
            continue
        if typ == CONTROL:
            special.append((i, AddedToken(tok, special=True, normalized=False)))
        elif typ == USER_DEFINED:
            plain.append((i, AddedToken(tok, special=False, normalized=False)))
    return [t for _, t in special], [t for _, t in plain]


def _byte_bpe(v: GGUFVocab, spec: VocabSpec) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    if v.merges is None:
        raise InputError(v.path, "byte-level BPE vocabulary without tokenizer.ggml.merges")
    base = {t: i for i, (t, ty) in enumerate(zip(v.tokens, v.types)) if ty == NORMAL}
    merges = [tuple(m.split(" ", 1)) for m in v.merges]
    tok = Tokenizer(BPE(base, merges, ignore_merges=spec.ignore_merges, fuse_unk=False, byte_fallback=False))
    if spec.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(spec.regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    steps: list[Any] = [processors.ByteLevel(trim_offsets=False)]
    if spec.add_bos:
        bos = v.tokens[v.bos_id]
        steps.append(processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, v.bos_id)]))
    tok.post_processor = processors.Sequence(steps)
    return tok


def _score_merges(v: GGUFVocab, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """SentencePiece BPE as ranked merges: every split a+b of a piece, ranked by the piece's score.

    SentencePiece (and llama.cpp's SPM tokenizer) merge the adjacent pair whose concatenation
    has the highest score; a BPE whose merge ranks follow those scores does the same.
    """
    scores = v.scores or [0.0] * v.size
    cands: list[tuple[float, int, int, str, str]] = []
    for tid, piece in enumerate(v.tokens):
        if len(piece) < 2 or v.types[tid] not in (NORMAL, USER_DEFINED) or vocab.get(piece) != tid:
            continue
        for k in range(1, len(piece)):
            a, b = piece[:k], piece[k:]
            if a in vocab and b in vocab:
                cands.append((-scores[tid], tid, k, a, b))
    cands.sort()
    return [(a, b) for *_, a, b in cands]


def _spm_bpe(v: GGUFVocab, spec: VocabSpec, *, add_dummy_prefix: bool) -> Any:
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE

    vocab = {t: i for i, t in enumerate(v.tokens) if not _is_filler(t, v.types[i])}
    if v.merges:  # gemma4 stores its merges
        merges = [tuple(m.split(" ", 1)) for m in v.merges]
    else:
        merges = _score_merges(v, vocab)
    unk = v.tokens[v.unk_id] if v.unk_id is not None else None
    tok = Tokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    norm: list[Any] = [normalizers.Prepend("▁")] if add_dummy_prefix else []
    tok.normalizer = normalizers.Sequence([*norm, normalizers.Replace(" ", "▁")])
    dec: list[Any] = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    if spec.add_bos:
        bos = v.tokens[v.bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, v.bos_id)])
    return tok


def sentencepiece_model(v: GGUFVocab, *, add_dummy_prefix: bool = True) -> bytes:
    """A SentencePiece ``ModelProto`` (serialized ``tokenizer.model``) from a ``llama``-type vocab.

    Pieces, scores and types are the GGUF's; model type BPE with byte fallback, whitespace
    escaped to ``▁``, identity normalization (as the Llama and Gemma models).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    if v.model != "llama" or v.scores is None:
        raise InputError(v.path, f"tokenizer model {v.model!r}: a SentencePiece model needs a 'llama' vocabulary")
    m = pb.ModelProto()
    for tok, score, typ in zip(v.tokens, v.scores, v.types):
        p = m.pieces.add()
        p.piece, p.score, p.type = tok, float(score), int(typ)
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = v.size
    ts.byte_fallback = BYTE in v.types
    ts.unk_id = v.unk_id if v.unk_id is not None else 0
    ts.bos_id = v.bos_id if v.bos_id is not None else -1
    ts.eos_id = v.eos_id if v.eos_id is not None else -1
    ts.pad_id = v.pad_id if v.pad_id is not None else -1
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = add_dummy_prefix
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m.SerializeToString()


def build_tokenizer(v: GGUFVocab, spec: VocabSpec, *, add_dummy_prefix: bool | None = None) -> Any:
    """The ``tokenizers.Tokenizer`` for a vocabulary (added tokens included)."""
    if spec.kind == "byte_bpe":
        tok = _byte_bpe(v, spec)
    elif spec.kind == "spm_bpe":
        tok = _spm_bpe(v, spec, add_dummy_prefix=bool(add_dummy_prefix))
    elif spec.kind == "sentencepiece":
        tok = _spm_bpe(v, spec, add_dummy_prefix=True if add_dummy_prefix is None else add_dummy_prefix)
    else:  # pragma: no cover - VOCABS is ours
        raise ValueError(spec.kind)
    special, plain = _added(v)
    if special:
        tok.add_special_tokens(special)
    if plain:
        tok.add_tokens(plain)
    return tok


def write_tokenizer(
    vocab: str | Path, out_dir: str | Path, *, add_dummy_prefix: bool | None = None, spec: str | None = None
) -> Path:
    """Write tokenizer.json + tokenizer_config.json (+ tokenizer.model for SentencePiece) to ``out_dir``.

    ``vocab``: a name of :data:`VOCABS` (read from the cached llama.cpp source) or a GGUF path
    (then ``spec`` names the pipeline, default by ``tokenizer.ggml.model``: ``llama`` →
    ``llama-spm``). ``add_dummy_prefix`` applies to SentencePiece-style vocabularies (None:
    the vocabulary's own setting). BOS/EOS/PAD/UNK come from the GGUF. Returns ``out_dir``.
    """
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab, str) and vocab in VOCABS:
        from layerbisect.producers.llamacpp import llamacpp_source

        s = VOCABS[vocab]
        v = read_vocab(llamacpp_source().vocab_gguf(vocab))
    else:
        v = read_vocab(vocab)
        s = VOCABS[spec or ("llama-spm" if v.model == "llama" else "")] if (spec or v.model == "llama") else None
        if s is None:
            raise InputError(v.path, f"tokenizer model {v.model!r}: pass spec= one of {', '.join(VOCABS)}")
    tok = build_tokenizer(v, s, add_dummy_prefix=add_dummy_prefix)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def name(i: int | None) -> str | None:
        return v.tokens[i] if i is not None and 0 <= i < v.size else None

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=name(v.bos_id),
        eos_token=name(v.eos_id),
        unk_token=name(v.unk_id),
        pad_token=name(v.pad_id),
        add_bos_token=s.add_bos,
        add_eos_token=False,
        model_max_length=1 << 20,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out)
    if s.kind == "sentencepiece":
        dummy = True if add_dummy_prefix is None else add_dummy_prefix
        (out / "tokenizer.model").write_bytes(sentencepiece_model(v, add_dummy_prefix=dummy))
    # The tokenizer.json written above is authoritative; say so (and what it was built from).
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["layerbisect_vocab"] = {
        "gguf": v.path.name, "spec": s.name, "add_dummy_prefix": add_dummy_prefix, "size": v.size,
        "bos_token_id": v.bos_id, "eos_token_id": v.eos_id, "pad_token_id": v.pad_id, "unk_token_id": v.unk_id,
    }
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    return out


# Bump when write_tokenizer's output for the same vocabulary changes.
_BUILDER_VERSION = "1"


def cached_tokenizer(name: str, *, add_dummy_prefix: bool | None = None) -> Path:
    """:func:`write_tokenizer` for a vocabulary of :data:`VOCABS`, built once into the fixture cache.

    ``$LAYERBISECT_CACHE/llamacpp/tokenizers/<name>-<key8>/``; building the 262k-token
    Gemma 4 tokenizer takes about a minute on a busy CPU, a cache hit nothing.
    """
    from layerbisect.producers.llamacpp import SDIST_SHA256

    if name not in VOCABS:
        raise InputError(name, f"not a llama.cpp vocabulary we rebuild (choose one of {', '.join(VOCABS)})")
    key = options_key(vocab=name, add_dummy_prefix=add_dummy_prefix, sdist=SDIST_SHA256, builder=_BUILDER_VERSION)
    final = cache_dir() / "llamacpp" / "tokenizers" / f"{name}-{key}"
    return build_atomic(final, lambda tmp: write_tokenizer(name, tmp, add_dummy_prefix=add_dummy_prefix) and None)


def tokenizer_info(tokenizer_dir: str | Path) -> dict[str, Any]:
    """What :func:`write_tokenizer` recorded: vocabulary size and bos/eos/pad/unk ids."""
    cfg = json.loads((Path(tokenizer_dir) / "tokenizer_config.json").read_text())
    if "layerbisect_vocab" not in cfg:
        raise InputError(tokenizer_dir, "not a tokenizer written by layerbisect.producers.vocab")
    return dict(cfg["layerbisect_vocab"])


# -- checks --------------------------------------------------------------------------------


def vocab_tests(gguf_path: str | Path) -> list[tuple[str, list[int]]]:
    """The ``.inp``/``.out`` pairs llama.cpp ships beside a vocab GGUF (text, expected ids)."""
    p = Path(gguf_path)
    inp, out = Path(f"{p}.inp"), Path(f"{p}.out")
    if not inp.is_file() or not out.is_file():
        return []
    sep = "\n__ggml_vocab_test__\n"
    raw = inp.read_text(encoding="utf-8")
    texts = raw.split(sep)
    if texts and texts[-1] == "":
        texts.pop()
    ids = [[int(x) for x in line.split()] for line in out.read_text().splitlines()]
    if len(texts) != len(ids):
        raise InputError(inp, f"{len(texts)} texts but {len(ids)} lines in {out.name}")
    return list(zip(texts, ids))


def check_vocab_tests(
    tokenizer: Any, tests: Sequence[tuple[str, list[int]]]
) -> list[tuple[str, list[int], list[int]]]:
    """Mismatches (text, expected, got) of ``tokenizer.encode(text, add_special_tokens=False)``.

    ``tokenizer``: a ``tokenizers.Tokenizer`` or a transformers tokenizer.
    """
    bad = []
    for text, want in tests:
        enc = tokenizer.encode(text, add_special_tokens=False)
        got = list(enc.ids if hasattr(enc, "ids") else enc)
        if got != want:
            bad.append((text, want, got))
    return bad


def pre_tokenizer_hash(tokenizer: Any) -> str:
    """The converter's ``chkhsh``: sha256 of ``str(tokenizer.encode(CHKTXT))`` (special tokens added)."""
    enc = tokenizer.encode(CHKTXT)
    ids = list(enc.ids if hasattr(enc, "ids") else enc)
    return sha256(str(ids).encode()).hexdigest()
