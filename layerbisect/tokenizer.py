"""Prompt text -> token ids, from the tokenizer a model file carries itself.

Design note
-----------
A layer diff is only meaningful if both runners see the same ids, so the reference side
tokenizes with the vocabulary stored in the GGUF (``tokenizer.ggml.*``), not with a
tokenizer fetched from elsewhere. We rebuild it as a ``tokenizers.Tokenizer`` (Rust, fast)
and aim for llama.cpp's ``llama_tokenize(..., add_special=True, parse_special=True)``:

``tokenizer.ggml.model == "llama"`` (SentencePiece, llama.cpp's SPM tokenizer)
    Vocabulary with one float score per token. llama.cpp splits the text into UTF-8
    characters and repeatedly merges the adjacent pair whose concatenation is a token with
    the *highest score* (leftmost on ties); characters not in the vocabulary fall back to
    ``<0xXX>`` byte tokens. That is BPE whose merge ranks are the scores, so we derive the
    merges from the scores (every split ``a + b`` of a token into two tokens, ordered by
    the token's score) and use a byte-fallback ``BPE`` model with no pre-tokenizer: the
    text is one word, merges may cross spaces exactly as in llama.cpp. Spaces become
    ``▁``; ``add_space_prefix`` prepends one ``▁`` to every run of plain text, which is
    what llama.cpp does after BOS and after each special token.
    transformers converts Gemma's GGUF vocabulary to a *Unigram* model over the same
    scores instead (``GGUFGemmaConverter``); for Gemma 3 both give the same ids on the
    texts we test, but where they differ we follow llama.cpp, the runtime GGUFs are for.

``tokenizer.ggml.model == "gpt2"`` (byte-level BPE)
    Tokens are stored byte-level encoded (``Ġ`` = space), merges as ``"a b"`` strings in
    rank order. The pre-tokenizer regex is not in the file, only its name
    (``tokenizer.ggml.pre``); ``PRE_REGEX`` maps the common names to the regexes
    llama.cpp uses for them. An unknown name is an error, not a silent fallback: a wrong
    split gives plausible-looking but different ids.

``tokenizer.ggml.model == "gemma4"`` (Gemma 4: SentencePiece-style BPE with stored merges)
    llama.cpp (``llama-vocab.cpp``, pre-tokenizer ``gemma4``) replaces spaces by ``▁``
    (``escape_whitespaces``), splits only at newline runs (``[^\n]+|[\n]+``: no word
    pre-splitting, merges cross ``▁``), merges by the stored rank order on raw UTF-8 (no
    byte-level mapping) and falls back to ``<0xXX>`` byte tokens for pieces not in the
    vocabulary; a run of newlines that is itself a token is emitted whole. BOS is always added
    (llama.cpp forces ``add_bos`` for this pre-tokenizer). Checked against the ``.inp``/``.out``
    pairs llama.cpp ships with ``ggml-vocab-gemma-4.gguf`` (tests/test_tokenizer.py).

Token types (``tokenizer.ggml.token_type``): 3 = control and 4 = user-defined become added
tokens, matched as whole tokens in the raw text before any normalization (so
``<start_of_turn>`` is one id, never split). Known gap: the ``tokenizers`` library matches
added tokens leftmost-longest, llama.cpp longest-token-first over the whole text; they
differ only for overlapping special tokens, which real vocabularies don't have.

BOS is added by us in ``encode`` (never by a post-processor) so ``add_bos`` is one switch
for both sources. Building the Gemma 3 tokenizer (262k tokens, ~0.5M derived merges) takes
a few seconds; it is cached per (path, mtime, size).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import BPE

from layerbisect.errors import InputError

if TYPE_CHECKING:
    import gguf

# GGUF token types (llama.cpp `llama_token_type`).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# The pre-tokenizer regexes of llama.cpp (`llama-vocab.cpp`), by `tokenizer.ggml.pre`.
_GPT2_RE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_RE = (
    r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Same as llama3 but one digit per piece.
_QWEN2_RE = (
    r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_TEKKEN_RE = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
    r"""|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
_GPT4O_RE = (
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"""
    r"""|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# llama.cpp's fallback for `pre = "default"` (and unknown values in old files): four regexes
# applied one after another, each splitting the pieces of the previous one further.
_DEFAULT_RES = (
    r"""[\p{P}\$\+<=>\^~\|]+""",
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)""",
    r"""\p{N}+""",
    r"""[0-9][0-9][0-9]""",
)

# pre name -> (regexes applied in sequence, ignore_merges). llama.cpp sets ignore_merges for
# the llama3 family: a piece that is itself a token is emitted whole, whatever the merges say.
PRE_REGEX: dict[str, tuple[tuple[str, ...] | str, bool]] = {
    "default": (_DEFAULT_RES, False),
    **{name: (_GPT2_RE, False) for name in ("gpt-2", "phi-2", "roberta-bpe", "mpt", "olmo", "jais")},
    # Digits one by one first, then GPT-2 splitting.
    **{
        name: ((r"\p{N}", _GPT2_RE), False)
        for name in ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b")
    },
    **{name: (_LLAMA3_RE, True) for name in ("llama3", "llama-v3", "llama-bpe", "falcon3")},
    **{name: (_LLAMA3_RE, False) for name in ("dbrx", "smaug-bpe")},
    **{name: (_QWEN2_RE, False) for name in ("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez")},
    "tekken": (_TEKKEN_RE, False),
    "gpt-4o": (_GPT4O_RE, False),
}


@dataclass
class Tokenizer:
    """Text <-> ids for one model. ``encode`` adds BOS when ``add_bos`` (overridable per call)."""

    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    source: str  # "gguf:llama", "gguf:gpt2", "tokenizer.json"
    hf: HFTokenizer = field(repr=False)
    # id -> token string (None for a hole in the ids); what fingerprint() hashes.
    _vocab: list[str | None] = field(repr=False, default_factory=list)
    _fp: str | None = field(default=None, init=False, repr=False, compare=False)  # fingerprint(), once

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        # Special tokens are kept: the point is to see exactly what the model was fed.
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary entry of each id (``▁The``, ``<0x0A>``, ``Ġthe``), for reports."""
        out = []
        for i in ids:
            s = self.hf.id_to_token(int(i))
            out.append(s if s is not None else f"<id {int(i)}?>")
        return out

    def fingerprint(self) -> str:
        """Short sha256 over the id -> string table and the BOS/EOS ids.

        Equal fingerprints: every id means the same string and BOS/EOS agree, so ids can be
        passed from one model to the other. Merges and scores are left out on purpose: a GGUF
        stores the same tokenizer as scores, a tokenizer.json as merges (and
        transformers' GGUF export turns Gemma's into a Unigram model), so they cannot be
        compared byte for byte; which tokens count as "special" varies between exporters for
        the same reason. Compare ``encode`` outputs to check segmentation. Trailing padding ids (holes,
        or llama.cpp's ``[PAD{i}]`` filler) are left out.
        """
        if self._fp is not None:
            return self._fp
        vocab = list(self._vocab)
        # Padding rows are not vocabulary: llama.cpp's converter fills ids the tokenizer lacks up to the
        # embedding's row count with "[PAD{i}]" (convert_hf_to_gguf.py, TextModel.get_vocab_base), a
        # tokenizer.json leaves them out; both sides then hash the same table.
        while vocab and (vocab[-1] is None or vocab[-1] == f"[PAD{len(vocab) - 1}]"):
            vocab.pop()
        h = hashlib.sha256()
        h.update(struct.pack("<qqq", len(vocab), _or_minus1(self.bos_id), _or_minus1(self.eos_id)))
        for s in vocab:
            b = b"\xff" if s is None else s.encode("utf-8")  # 0xff never occurs in UTF-8: a hole in the ids
            h.update(struct.pack("<I", len(b)) + b)
        self._fp = h.hexdigest()[:16]
        return self._fp

    def spent(self) -> SpentTokenizer:
        """What a run still asks of this tokenizer once the prompt is settled: its special ids and fingerprint."""
        return SpentTokenizer(bos_id=self.bos_id, eos_id=self.eos_id, source=self.source, _fp=self.fingerprint())


@dataclass(frozen=True)
class SpentTokenizer:
    """A tokenizer after the prompt is settled (``Tokenizer.spent``): BOS/EOS ids (greedy decoding stops at EOS)
    and the fingerprint, without the vocabulary and the ``tokenizers`` object (~290 MiB for Gemma 3's 262k
    tokens). Text in or out is a programming error here: ``RuntimeError``."""

    bos_id: int | None
    eos_id: int | None
    source: str
    _fp: str

    def fingerprint(self) -> str:
        return self._fp

    def encode(self, *a: object, **k: object) -> list[int]:
        raise RuntimeError("this tokenizer was released after the prompt was settled (Tokenizer.spent)")

    decode = token_strings = encode  # type: ignore[assignment]


@dataclass(frozen=True)
class Segmentation:
    """One text through two tokenizers: both id lists, their vocabulary strings, the first position they differ.

    ``first`` is None when the ids are equal; a shorter list that is a prefix of the other differs at its length.
    """

    text: str
    ref_ids: tuple[int, ...]
    cand_ids: tuple[int, ...]
    ref_pieces: tuple[str, ...]
    cand_pieces: tuple[str, ...]
    first: int | None

    def at(self, i: int) -> tuple[str, str]:
        """``"id 'piece'"`` of each side at position ``i`` (``-`` past a side's end)."""
        def one(ids: tuple[int, ...], pieces: tuple[str, ...]) -> str:
            return f"id {ids[i]} {pieces[i]!r}" if i < len(ids) else "-"

        return one(self.ref_ids, self.ref_pieces), one(self.cand_ids, self.cand_pieces)

    @staticmethod
    def show(pieces: Sequence[str], limit: int = 32) -> str:
        """Pieces joined by ``|`` (the segmentation at a glance), cut after ``limit``."""
        shown = "|".join(pieces[:limit])
        return shown + (f"|… ({len(pieces) - limit} more)" if len(pieces) > limit else "")


def segmentation(ref: Tokenizer, cand: Tokenizer, text: str) -> Segmentation:
    """Encode ``text`` with both tokenizers (each with its own BOS rule) and compare (pure)."""
    a, b = ref.encode(text), cand.encode(text)
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    if first is None and len(a) != len(b):
        first = min(len(a), len(b))
    return Segmentation(text, tuple(a), tuple(b), tuple(ref.token_strings(a)), tuple(cand.token_strings(b)), first)


def _or_minus1(x: int | None) -> int:
    return -1 if x is None else int(x)


# ---------------------------------------------------------------------------------------------
# GGUF
# ---------------------------------------------------------------------------------------------

_CACHE: dict[tuple[str, int, int], Tokenizer] = {}


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    fast = getattr(reader, "array_values", None)  # FastGGUFReader: whole arrays without per-element views
    v = fast(key) if fast is not None else None
    if v is not None:
        return v
    f = reader.fields.get(key)
    # contents() decodes scalars and arrays (strings included) straight from the memory map.
    return default if f is None else f.contents()


def tokenizer_from_gguf(reader: gguf.GGUFReader, path: str = "") -> Tokenizer:
    """Build the tokenizer stored in a GGUF's metadata. ``path`` names the file in errors and keys the cache."""
    path = str(path or getattr(getattr(reader, "data", None), "filename", "") or "")
    key = None
    if path and os.path.exists(path):
        st = os.stat(path)
        key = (os.path.realpath(path), st.st_mtime_ns, st.st_size)
        if key in _CACHE:
            return _CACHE[key]
    where = path or "<gguf>"

    model = _field(reader, "tokenizer.ggml.model")
    if model is None:
        raise InputError(where, "no tokenizer.ggml.model in the metadata: this GGUF carries no tokenizer")
    tokens: list[str] | None = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise InputError(where, "tokenizer.ggml.tokens is missing or empty")
    n = len(tokens)
    types = _field(reader, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * n
    if len(types) != n:
        raise InputError(where, f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    bos = _field(reader, "tokenizer.ggml.bos_token_id")
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    for name, tid in (("bos", bos), ("eos", eos)):
        if tid is not None and not 0 <= tid < n:
            raise InputError(where, f"tokenizer.ggml.{name}_token_id = {tid} is outside the {n}-token vocabulary")

    if model == "llama":
        scores = _field(reader, "tokenizer.ggml.scores")
        if scores is None or len(scores) != n:
            raise InputError(where, f"tokenizer model 'llama' needs tokenizer.ggml.scores for all {n} tokens")
        add_space_prefix = bool(_field(reader, "tokenizer.ggml.add_space_prefix", True))
        hf = _build_spm(tokens, scores, types, add_space_prefix)
        add_bos_default = True
    elif model == "gpt2":
        merges = _field(reader, "tokenizer.ggml.merges")
        if not merges:
            raise InputError(where, "tokenizer model 'gpt2' needs tokenizer.ggml.merges")
        pre = _field(reader, "tokenizer.ggml.pre", "default")
        if pre not in PRE_REGEX:
            known = ", ".join(sorted(PRE_REGEX))
            raise InputError(where, f"tokenizer.ggml.pre = {pre!r} is not a pre-tokenizer we know; known: {known}")
        hf = _build_bpe(where, tokens, merges, types, *PRE_REGEX[pre])
        add_bos_default = False  # llama.cpp's default for BPE vocabularies
    elif model == "gemma4":
        merges = _field(reader, "tokenizer.ggml.merges")
        if not merges:
            raise InputError(where, "tokenizer model 'gemma4' needs tokenizer.ggml.merges")
        hf = _build_gemma4(where, tokens, merges, types)
        add_bos_default = True  # llama.cpp overrides add_bos to true for Gemma 4 (llama-vocab.cpp)
    else:
        raise InputError(where, f"tokenizer model {model!r} is not supported (supported: 'llama', 'gpt2', 'gemma4')")

    tok = Tokenizer(
        bos_id=bos,
        eos_id=eos,
        add_bos=True if model == "gemma4" else bool(_field(reader, "tokenizer.ggml.add_bos_token", add_bos_default)),
        source=f"gguf:{model}",
        hf=hf,
        _vocab=list(tokens),
    )
    if key is not None:
        _CACHE[key] = tok
    return tok


def _token_ids(tokens: Sequence[str]) -> dict[str, int]:
    # Duplicate strings exist in some vocabularies; llama.cpp's text->id map keeps the last.
    return {t: i for i, t in enumerate(tokens)}


def _added_tokens(hf: HFTokenizer, tokens: Sequence[str], types: Sequence[int]) -> None:
    # normalized=False: matched in the raw text, before spaces become ▁ (llama.cpp partitions
    # the raw text on these tokens first, too).
    control = [
        AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == TOKEN_CONTROL
    ]
    user = [
        AddedToken(tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == TOKEN_USER_DEFINED
    ]
    if control:
        hf.add_special_tokens(control)
    if user:
        hf.add_tokens(user)


def _build_spm(
    tokens: list[str], scores: Sequence[float], types: Sequence[int], add_space_prefix: bool
) -> HFTokenizer:
    vocab = _token_ids(tokens)
    # Only pieces the SPM merge loop can produce: normal and user-defined tokens. Control,
    # byte and unused tokens are never the result of a merge.
    mergeable = {TOKEN_NORMAL, TOKEN_USER_DEFINED}
    cands: list[tuple[float, int, str, str]] = []
    for tid, tok in enumerate(tokens):
        n = len(tok)
        if n < 2 or types[tid] not in mergeable or vocab.get(tok) != tid:
            continue
        score = -scores[tid]
        for k in range(1, n):
            a = tok[:k]
            if a in vocab:  # test the prefix first: most splits fail here, halving the lookups
                b = tok[k:]
                if b in vocab:
                    cands.append((score, tid, a, b))
    # Rank = the merged token's score, highest first; ties by id, then by split point, for determinism.
    cands.sort(key=lambda c: (c[0], c[1]))
    merges = [(a, b) for _, _, a, b in cands]

    unk = next((tokens[i] for i, t in enumerate(types) if t == TOKEN_UNKNOWN), None)
    hf = HFTokenizer(BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    norm: list[Any] = [normalizers.Prepend("▁")] if add_space_prefix else []
    hf.normalizer = normalizers.Sequence([*norm, normalizers.Replace(" ", "▁")])
    dec: list[Any] = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    hf.decoder = decoders.Sequence(dec)
    _added_tokens(hf, tokens, types)
    return hf


def _build_bpe(
    where: str,
    tokens: list[str],
    merges: Sequence[str],
    types: Sequence[int],
    regexes: tuple[str, ...] | str,
    ignore_merges: bool,
) -> HFTokenizer:
    pairs = []
    for m in merges:
        # Split on the first space: a space inside a byte-level token is stored as Ġ.
        a, sep, b = m.partition(" ")
        if not sep:
            raise InputError(where, f"tokenizer.ggml.merges entry {m!r} is not 'left right'")
        pairs.append((a, b))
    hf = HFTokenizer(BPE(_token_ids(tokens), pairs, ignore_merges=ignore_merges))
    if isinstance(regexes, str):
        regexes = (regexes,)
    # "isolated": matches and the gaps between them both become pieces, as in llama.cpp's
    # unicode_regex_split; the byte-level mapping comes after the split, on the raw text.
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated", invert=False) for r in regexes]
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    hf.decoder = decoders.ByteLevel()
    _added_tokens(hf, tokens, types)
    return hf


def _build_gemma4(where: str, tokens: list[str], merges: Sequence[str], types: Sequence[int]) -> HFTokenizer:
    pairs = []
    for m in merges:
        # llama.cpp splits at the first space after position 0 (a merge never has an empty left side).
        pos = m.find(" ", 1)
        if pos < 0:
            raise InputError(where, f"tokenizer.ggml.merges entry {m!r} is not 'left right'")
        pairs.append((m[:pos], m[pos + 1:]))
    vocab = _token_ids(tokens)
    hf = HFTokenizer(BPE(vocab, pairs, byte_fallback=True, fuse_unk=False))
    hf.normalizer = normalizers.Replace(" ", "▁")
    # Newline runs are pieces of their own; a run that is a token is kept whole (llama.cpp's
    # Gemma 4 special case), which a BPE with ignore_merges does for any piece in the vocabulary.
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[^\n]+|[\n]+"), behavior="isolated", invert=False)
    hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    _added_tokens(hf, tokens, types)
    return hf


# ---------------------------------------------------------------------------------------------
# HF tokenizer.json
# ---------------------------------------------------------------------------------------------


def tokenizer_from_hf(path: str | Path) -> Tokenizer:
    """A tokenizer.json (or a directory with one). BOS/EOS/add_bos come from tokenizer_config.json,
    then config.json, then what the tokenizer.json's post-processor does."""
    from .validation import read_json, read_text

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.exists() and not file.is_symlink():
        raise InputError(p, "no tokenizer.json here")
    text = read_text(file, "tokenizer.json", max_bytes=1 << 30)  # a regular file (a FIFO would block)
    try:
        hf = HFTokenizer.from_str(text)
    except Exception as e:  # the Rust side raises a bare Exception on malformed JSON
        raise InputError(file, f"not a tokenizers tokenizer.json: {' '.join(str(e).split())}") from None

    def load(name: str) -> dict[str, Any]:
        f = file.parent / name
        if not f.exists() and not f.is_symlink():
            return {}
        return read_json(f, name)

    tcfg, cfg = load("tokenizer_config.json"), load("config.json")
    cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg

    def special_id(name: str) -> int | None:
        tok = tcfg.get(f"{name}_token")
        if isinstance(tok, dict):
            tok = tok.get("content")
        if isinstance(tok, str) and (tid := hf.token_to_id(tok)) is not None:
            return tid
        tid = cfg.get(f"{name}_token_id")
        if isinstance(tid, list):  # eos_token_id may list several stop ids; the first is the canonical one
            tid = tid[0] if tid else None
        return int(tid) if isinstance(tid, int) else None

    bos, eos = special_id("bos"), special_id("eos")
    add_bos = tcfg.get("add_bos_token")
    if add_bos is None:
        # No explicit flag: did the post-processor put BOS first?
        with_special = hf.encode("", add_special_tokens=True).ids
        add_bos = bos is not None and with_special[:1] == [bos]

    n = hf.get_vocab_size(with_added_tokens=True)
    id_to_tok = {i: t for t, i in hf.get_vocab(with_added_tokens=True).items()}
    vocab = [id_to_tok.get(i) for i in range(max(n, max(id_to_tok, default=-1) + 1))]
    return Tokenizer(
        bos_id=bos,
        eos_id=eos,
        add_bos=bool(add_bos),
        source="tokenizer.json",
        hf=hf,
        _vocab=vocab,
    )


# ---------------------------------------------------------------------------------------------
# ids typed by a user
# ---------------------------------------------------------------------------------------------


def parse_token_ids(s: str) -> list[int]:
    """``"2,818,5279"`` or ``"2 818 5279"`` or ``"[2, 818]"`` -> ids. Anything else is an InputError."""
    body = s.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    if any(not p.strip() for p in body.split(",")[:-1]):  # "2,,3" or ",2": an id went missing
        raise InputError("token ids", f"{s!r} has an empty entry between commas")
    parts = body.replace(",", " ").split()
    if not parts:
        raise InputError("token ids", f"{s!r} holds no ids; expected e.g. '2,818,5279'")
    for p in parts:
        if not (p.isascii() and p.isdigit()):  # rejects signs, floats, hex, "²": ids are decimal and >= 0
            raise InputError("token ids", f"{p!r} in {s!r} is not a non-negative integer")
    return [int(p) for p in parts]
