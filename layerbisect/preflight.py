"""Checks on a command's arguments that run before any model is loaded.

Design notes
- A bad argument found after 25 s and 8 GB of work is a bad experience and, for ``--out``, a
  destroyed report; so every command checks what it can from its arguments and the model
  headers (GGUF metadata or config.json: ``api.peek_config`` reads no weight) first, and raises one
  ``InputError`` naming the flag or file.
- ``check_device``: a torch device that exists on this machine (``cuda`` with no GPU, ``cuda:3``
  on a 2-GPU host and ``tpu7`` are refused).
- ``check_token_ids``: ``--tokens`` inside the vocabulary.
- ``check_length``: prompt + ``--generate`` must fit the model's context (``context_length`` /
  ``max_position_embeddings``): ``--generate 10**12`` is refused, not run until killed.
- ``check_select``: every ``--select`` pattern must match a capture point of the model
  (``graph.inventory.capture_points``, from the graph built on ``meta``); a typo is refused rather
  than silently comparing nothing.
- ``check_baseline``: a ``--baseline`` report must be of the same model (arch, layers,
  vocabulary) and share at least one capture point with this run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import InputError

DEVICE_TYPES = ("cpu", "cuda")


def check_device(spec: str | None, flag: str = "--device") -> str | None:
    """``spec`` if it names a device this machine has; None passes through."""
    if spec is None:
        return None
    import torch

    try:
        d = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(flag, f"{spec!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if d.type not in DEVICE_TYPES:
        raise InputError(flag, f"device type {d.type!r} is not supported (use {', '.join(DEVICE_TYPES)})")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(flag, f"{spec!r}: no CUDA GPU is available on this machine (use --device cpu)")
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise InputError(flag, f"{spec!r}: this machine has {n} CUDA device(s) (cuda:0 .. cuda:{n - 1})")
    elif d.index not in (None, 0):
        raise InputError(flag, f"{spec!r}: there is one CPU device")
    return spec


def check_token_ids(ids: Sequence[int] | None, cfg: Any) -> None:
    """``--tokens`` ids inside the model's vocabulary (from the header), before the model is loaded."""
    bad = [t for t in ids or () if not 0 <= t < cfg.vocab_size]
    if bad:
        raise InputError("--tokens", f"token ids {bad[:5]} are outside the vocabulary (size {cfg.vocab_size})")


def check_length(n_prompt: int | None, generate: int, cfg: Any, where: str = "--generate") -> None:
    """prompt + generated tokens must fit the model's context window (``n_prompt`` None: not tokenized yet,
    only ``generate`` is checked). Raises ``InputError`` naming ``where``."""
    ctx = int(cfg.context_length)
    if n_prompt is not None and n_prompt > ctx:  # the prompt alone: --generate is not the problem
        raise InputError("--prompt/--tokens", f"{n_prompt} prompt tokens exceed the model's context of {ctx} tokens")
    if generate > ctx or (n_prompt is not None and n_prompt + generate > ctx):
        said = f"{generate} generated tokens" if n_prompt is None else \
            f"{n_prompt} prompt + {generate} generated tokens"
        raise InputError(where, f"{said} exceed the model's context of {ctx} tokens")


def _patterns(select: str | Sequence[str]) -> list[str]:
    return [p.strip() for p in select.split(",")] if isinstance(select, str) else [str(p) for p in select]


def possible_points(spec: Any) -> list[str]:
    """Every capture point of the model, derived from its graph built on ``meta`` (no memory)."""
    from .graph.inventory import capture_points

    return list(capture_points(spec))


def check_select(select: str | Sequence[str], cfg: Any) -> None:
    pats = _patterns(select)
    if not pats or any(not p for p in pats):
        raise InputError("--select", f"{select!r} has an empty pattern; e.g. 'layers.*.out,logits*'")
    names = possible_points(cfg)
    for p in pats:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise InputError(
                "--select",
                f"pattern {p!r} matches no capture point of this {cfg.n_layers}-layer model "
                f"(points are named like embed, layers.0.attn.q, layers.{cfg.n_layers - 1}.out, logits; "
                "see docs/CAPTURE_NAMES.md)",
            )


def check_baseline(path: str | Path, cfg: Any, select: str | Sequence[str] = "*") -> Mapping[str, Any]:
    """Load a baseline report.json and check it can be compared with this run; returns its data."""
    from .comparison.report import load_report_json

    data = load_report_json(path)
    model = data.get("model")
    if isinstance(model, Mapping):
        diff = []
        for key, mine in (("arch", cfg.arch), ("n_layers", cfg.n_layers), ("vocab_size", cfg.vocab_size)):
            theirs = model.get(key)
            if theirs is not None and theirs != mine:
                diff.append(f"{key} {theirs!r} there, {mine!r} here")
        if diff:
            raise InputError(path, f"is a report of a different model ({'; '.join(diff)})")
    pats = _patterns(select)
    wanted = {n for n in possible_points(cfg) if any(fnmatch.fnmatchcase(n, p) for p in pats)}
    points = data.get("points") or {}
    if not wanted & set(points):
        sample = ", ".join(list(points)[:3]) or "none"
        raise InputError(path, f"has no capture point in common with this run (baseline points: {sample} ...)")
    return data


__all__ = ["check_baseline", "check_device", "check_length", "check_select", "check_token_ids"]
