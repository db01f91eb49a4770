"""One runner interface for every backend (Polygraphy style): activate → run → deactivate.

A runner owns a built ``Decoder`` and its tokenizer; ``run`` does one whole-sequence pass
with captures on, ``generate`` greedy-decodes through the KV cache. Reference and candidate
runners only differ in how ``_build`` makes the model.

``stream`` (None = auto, True, False) and ``memory_cap`` (bytes) choose between the resident
model and a ``streaming.StreamedDecoder`` that reads, runs and frees one layer at a time;
both have the same interface, so ``run``/``generate`` do not care (see ``streaming.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from .capture import Captures, Selector
from .errors import InputError
from .graph import Decoder, KVCache
from .kernels import on_device
from .spec import ModelSpec


class ModelRunner:
    kind = "model"

    def __init__(self, path: str, *, device: str | torch.device = "cpu"):
        self.path = str(path)
        self.device = torch.device(device)
        self.model: Decoder | None = None
        self.tokenizer: Any = None
        self.load_seconds = 0.0
        self.stream: bool | None = None  # None: decide from the FP32 size vs the memory budget
        self.memory_cap: int | None = None  # bytes of weights allowed on the device at once
        self.memory_share = 1  # runners sharing this device's memory (the auto budget is split)
        self.stream_reason = ""

    # -- lifecycle -------------------------------------------------------------------------
    def _build(self) -> None:  # sets self.model and self.tokenizer
        raise NotImplementedError

    def activate(self) -> ModelRunner:
        if self.model is None:
            t0 = time.perf_counter()
            from . import streaming

            stream, self.stream_reason = False, ""
            if self.kind in ("reference", "candidate") and self.stream is not False:
                cfg = streaming.peek_config(self) if self.stream is None else None
                stream, self.stream_reason = streaming.decide_stream(
                    self.stream, cfg, self.device, self.memory_cap, self.memory_share
                )
            with on_device(self.device):  # a loader's kernels (GGUF dequantization) launch on this device
                if stream:
                    streaming.build_streamed(self)
                else:
                    self._build()
            self.load_seconds = time.perf_counter() - t0
        return self

    @property
    def streaming(self) -> bool:
        from .streaming import StreamedDecoder

        return isinstance(self.model, StreamedDecoder)

    def deactivate(self) -> None:
        self.model = None

    def __enter__(self) -> ModelRunner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @property
    def config(self) -> ModelSpec:
        assert self.model is not None, "runner not activated"
        return self.model.cfg

    # -- work ------------------------------------------------------------------------------
    def run(
        self,
        token_ids: Sequence[int],
        *,
        select: str | Sequence[str] | None = "*",
        summary_only: bool = False,
        keep_device: bool = False,
    ) -> Captures:
        """One whole-sequence pass over ``token_ids`` with captures at the selected points (``keep_device``: kept
        where they are made, as ``Captures.keep_device``, instead of copied to the CPU point by point)."""
        self.activate()
        assert self.model is not None
        with on_device(self.device):
            return self._run(token_ids, select=select, summary_only=summary_only, keep_device=keep_device)

    def _run(self, token_ids: Sequence[int], *, select: str | Sequence[str] | None, summary_only: bool,
             keep_device: bool = False) -> Captures:
        assert self.model is not None
        caps = Captures(selector=Selector(select), summary_only=summary_only, token_ids=list(token_ids),
                        keep_device=keep_device)
        caps.meta.update({"runner": self.kind, "path": self.path, "arch": self.model.cfg.arch})
        self.model.rec.captures = caps
        try:
            self.model(torch.tensor(list(token_ids), dtype=torch.long), 0, KVCache())
        finally:
            self.model.rec.captures = None
        return caps

    def generate(
        self,
        token_ids: Sequence[int],
        n: int,
        *,
        stop_at_eos: bool = False,
        captures: Captures | None = None,
    ) -> list[int]:
        """Greedy-decode n tokens through the KV cache; returns the new ids only."""
        self.activate()
        with on_device(self.device):
            return self._generate(token_ids, n, stop_at_eos=stop_at_eos, captures=captures)

    def _generate(self, token_ids: Sequence[int], n: int, *, stop_at_eos: bool,
                  captures: Captures | None) -> list[int]:
        assert self.model is not None
        model, cache = self.model, KVCache()
        model.rec.captures = captures
        try:
            logits = model(torch.tensor(list(token_ids), dtype=torch.long), 0, cache)
            out: list[int] = []
            eos = getattr(self.tokenizer, "eos_id", None)
            for _ in range(n):
                nxt = int(torch.argmax(logits[-1]).item())
                out.append(nxt)
                if stop_at_eos and nxt == eos:
                    break
                if len(out) == n:
                    break
                logits = model(torch.tensor([nxt]), cache.length, cache)
            return out
        finally:
            model.rec.captures = None


def check_same_model(ref: ModelRunner, cand: ModelRunner) -> None:
    """Refuse a candidate whose sizes differ from the reference's (``ModelSpec.shape_signature``), naming them."""
    a, b = ref.config.shape_signature(), cand.config.shape_signature()
    diff = []
    for k in dict.fromkeys([*a, *b]):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):  # one layer: name the sizes that differ
            diff += [f"{k} {f} {y.get(f)}, the reference's {x.get(f)}" for f in dict.fromkeys([*x, *y])
                     if x.get(f) != y.get(f)]
        elif x != y:
            diff.append(f"{k} {y}, the reference's {x}")
    if diff:
        more = f" (+{len(diff) - 3} more)" if len(diff) > 3 else ""
        raise InputError(cand.path, f"is not the same model as {ref.path} ({'; '.join(diff[:3])}{more})")
