"""Tokenizer findings (issue 17, item 3): the first differing ids with both strings and both segmentations;
a warning with --tokens or when both sides segment alike; critical only when the compared ids differ."""

from __future__ import annotations

from types import SimpleNamespace

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import pre_tokenizers
from tokenizers.models import WordLevel

from layerbisect.comparison.findings import detect_tokenizer_mismatch
from layerbisect.comparison.gate import GateConfig
from layerbisect.pipeline import CompareOptions, tokenizer_findings
from layerbisect.tokenizer import Tokenizer, segmentation

WORDS = ["<bos>", "<unk>", "The", "capital", "of", "France", "is"]
CHARS = sorted(set("ThecapitalofFranceis"))


def _tok(pieces: list[str], split: str) -> Tokenizer:
    vocab = {p: i for i, p in enumerate(pieces)}
    hf = HFTokenizer(WordLevel(vocab, unk_token="<unk>"))
    ws = pre_tokenizers.WhitespaceSplit()
    hf.pre_tokenizer = ws if split == "words" else pre_tokenizers.Sequence(
        [ws, pre_tokenizers.Split(pattern="", behavior="isolated")])  # then every character on its own
    return Tokenizer(bos_id=0, eos_id=None, add_bos=True, source="test", hf=hf, _vocab=list(pieces))


REF = _tok(WORDS, "words")
CHARWISE = _tok(["<bos>", "<unk>", *CHARS], "chars")  # like transformers' GGUF export of Gemma: single characters
RENAMED = _tok([*WORDS, "extra"], "words")  # another vocabulary (one more entry) that splits this prompt alike
PROMPT = "The capital of France is"


def _run(tok: Tokenizer) -> SimpleNamespace:
    return SimpleNamespace(tokenizer=tok)


def test_segmentation_first_difference_and_pieces() -> None:
    seg = segmentation(REF, CHARWISE, PROMPT)
    assert seg.ref_pieces == ("<bos>", "The", "capital", "of", "France", "is")
    assert seg.cand_pieces[:4] == ("<bos>", "T", "h", "e") and len(seg.cand_ids) == 1 + len(PROMPT.replace(" ", ""))
    assert seg.first == 1 and seg.at(1) == ("id 2 'The'", f"id {seg.cand_ids[1]} 'T'")
    assert segmentation(REF, REF, PROMPT).first is None


def test_tokens_given_difference_is_a_warning_showing_both_segmentations() -> None:
    ids = REF.encode(PROMPT)
    (f,) = tokenizer_findings(_run(REF), _run(CHARWISE), CompareOptions(prompt=None, tokens=ids), ids)
    assert f.kind == "tokenizer_mismatch" and f.severity == "warning"
    assert "6 vs 21 tokens, first at position 1 (id 2 'The' vs id" in f.title
    assert "<bos>|The|capital|of|France|is" in f.detail and "<bos>|T|h|e|c|a|p" in f.detail
    assert "--tokens" in f.detail and f.evidence["text"] == PROMPT  # the ids decoded, BOS left out
    gate_fails_on = GateConfig.builtin().fail_on
    assert f.severity not in gate_fails_on


def test_prompt_encoded_differently_is_an_error_not_critical() -> None:
    ids = REF.encode(PROMPT)
    (f,) = tokenizer_findings(_run(REF), _run(CHARWISE), CompareOptions(prompt=PROMPT), ids)
    assert f.severity == "error" and f.token_index == 1


def test_same_segmentation_other_vocabulary_is_a_warning() -> None:
    ids = REF.encode(PROMPT)
    (f,) = tokenizer_findings(_run(REF), _run(RENAMED), CompareOptions(prompt=PROMPT), ids)
    assert f.severity == "warning" and "both segment the prompt the same way" in f.title
    assert f.evidence["ref_fingerprint"] != f.evidence["cand_fingerprint"]
    assert tokenizer_findings(_run(REF), _run(REF), CompareOptions(prompt=PROMPT), ids) == []


def test_compared_ids_that_differ_are_critical_with_both_strings() -> None:
    cmp = SimpleNamespace(
        ref_meta={"token_pieces": ["<bos>", "The", "capital"]}, cand_meta={"token_pieces": ["<bos>", "The", "c"]},
        token_mismatch=[2], ref_token_ids=[0, 2, 3], cand_token_ids=[0, 2, 9])
    (f,) = detect_tokenizer_mismatch(cmp)
    assert f.severity == "critical" and f.token_index == 2
    assert "reference id 3 'capital', candidate id 9 'c'" in f.detail and "<bos>|The|capital" in f.detail
