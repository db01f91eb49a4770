"""The reference runner on the real Gemma 3 270M Q4_K_M, against an independent implementation."""

from __future__ import annotations

import pytest
import torch

GEMMA_PROMPT_IDS = [2, 818, 5279, 529, 7001, 563]  # "The capital of France is" with BOS

pytestmark = pytest.mark.slow

# What an independent implementation (transformers on this file, and llama.cpp) continues with.
EXPECTED = " the capital of the country of France. It is the largest"


def test_prompt_tokenizes_to_known_ids(gemma_reference):
    assert gemma_reference.tokenizer.encode("The capital of France is") == GEMMA_PROMPT_IDS


def test_greedy_continuation(gemma_reference):
    new = gemma_reference.generate(GEMMA_PROMPT_IDS, 12)
    assert gemma_reference.tokenizer.decode(new) == EXPECTED, new


def test_logits_match_transformers_gguf_loading(gemma_reference, gemma_hf_model):
    ids = GEMMA_PROMPT_IDS + gemma_reference.generate(GEMMA_PROMPT_IDS, 12)
    ours = gemma_reference.run(ids, select="logits")["logits"]
    with torch.no_grad():
        theirs = gemma_hf_model(torch.tensor([ids])).logits[0].float()
    cos = torch.nn.functional.cosine_similarity(ours.double(), theirs.double(), dim=-1)
    assert cos.min() >= 0.9999, f"worst position {int(cos.argmin())}: cosine {cos.min():.6f}"
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))


def test_every_capture_point_is_finite_and_named(gemma_reference):
    from layerbisect.graph import capture_points

    caps = gemma_reference.run(GEMMA_PROMPT_IDS)
    assert caps.names() == list(capture_points(gemma_reference.config))
    for n in caps.names():
        assert torch.isfinite(caps[n]).all(), n
        assert caps[n].shape[0] == len(GEMMA_PROMPT_IDS), n


def test_summary_only_keeps_memory_bounded(gemma_reference):
    caps = gemma_reference.run(GEMMA_PROMPT_IDS, summary_only=True)
    assert not caps.tensors and caps.summaries
    s = caps.summary("layers.17.out")
    assert s.norm.shape == (len(GEMMA_PROMPT_IDS),) and int(s.nan.sum()) == 0
