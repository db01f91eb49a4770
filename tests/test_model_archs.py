"""The one graph, every architecture: ours vs transformers, and GGUF reference vs HF candidate.

Tiny random models (per architecture) are written as HF checkpoints and as GGUF files by
``gguf.GGUFWriter``. transformers runs the HF model (an independent implementation); our
graph runs the GGUF (reference runner) and the HF directory (candidate runner, dense).
"""

from __future__ import annotations

import pytest
import torch

from layerbisect.candidates.runner import CandidateRunner
from layerbisect.producers.tiny import ARCHS
from layerbisect.references.runner import ReferenceRunner

IDS = [2] + list(range(5, 45))  # longer than the tiny Gemma sliding window (8)
# FP32 graphs computing the same function: agreement far above the 0.9999 floor.
MIN_COSINE = 0.9999


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_reference_matches_transformers(tiny_models, arch):
    transformers = pytest.importorskip("transformers")
    # eager: transformers applies the Gemma 2 attention softcap only in its eager attention.
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_models[arch]["hf"], dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([IDS])).logits[0]
    ours = ReferenceRunner(tiny_models[arch]["gguf"]).run(IDS, select="logits")["logits"]
    cos = _cos(ours, theirs)
    assert cos.min() >= MIN_COSINE, f"{arch}: worst position {int(cos.argmin())} cosine {cos.min():.6f}"
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1)), f"{arch}: top-1 differs"


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_reference_and_hf_candidate_agree_everywhere(tiny_models, arch):
    ref = ReferenceRunner(tiny_models[arch]["gguf"]).run(IDS)
    cand_runner = CandidateRunner(tiny_models[arch]["hf"])
    cand = cand_runner.run(IDS)
    assert (cand_runner.load_notes["missing"], cand_runner.load_notes["unused"]) == ([], [])
    assert ref.names() == cand.names(), "both runners must expose the same capture points"
    worst = min((float(_cos(ref[n], cand[n]).min()), n) for n in ref.names())
    assert worst[0] >= MIN_COSINE, f"{arch}: {worst[1]} cosine {worst[0]:.6f}"
