"""kernels."""

from __future__ import annotations

import contextlib
from typing import Any

import torch


def on_device(device: Any) -> contextlib.AbstractContextManager:
    """Make ``device`` the current CUDA device for the block (nothing on the CPU).

    Triton launches on the *current* device, not on its arguments' device: with the candidate on
    ``cuda:1`` and a thread whose current device is ``cuda:0`` a kernel would run on the wrong GPU.
    Every launch, and every side's whole pass, runs under this guard (``--ref-device cuda:0
    --cand-device cuda:1``).
    """
    dev = torch.device(device)
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()
