"""Shared helpers for the producer tests (not a conftest: tests/ has none by design)."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A prompt longer than the tiny Gemma sliding window (8), so the window mask matters.
TOKENS = torch.tensor([[1, 331, 387, 295, 40, 41, 100, 200, 300, 400, 500, 17, 18, 19, 20, 21]])

# Same weights, same graph, F32 both sides: only summation order may differ.
COS_F32 = 0.9999
# Q8_0 keeps ~0.4% relative error per weight; through 6 tiny layers cosine stays above this.
COS_Q8_0 = 0.999


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def logits(model: torch.nn.Module, ids: torch.Tensor = TOKENS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()
