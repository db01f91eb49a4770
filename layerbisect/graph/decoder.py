"""The one decoder graph both runners share, built from a ``ModelSpec``.

The reference and candidate runners differ only in the weights loaded and the linear modules
swapped in (``nn.Linear`` in FP32 for the reference, quantized modules for the candidate).
Batch size is 1: a debugging run is one sequence, so every activation is (T, F) and capture
rows are token positions. Each op records its output under its canonical capture name
(docs/CAPTURE_NAMES.md) into the ``Captures`` store attached to ``rec``, if any; ``points()``
lists those names in execution order, derived from the built modules (a test checks a real
forward records exactly them).
"""

from __future__ import annotations

import torch
from torch import nn

from ..spec import ModelSpec
from .attention import KVCache, KVQuant
from .layer import Layer
from .ops import Recorder, RMSNorm, softcap
from .per_layer import PerLayerInputs


class Decoder(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.rec = Recorder()
        # _weight skips nn.Embedding's normal_ init, which takes ~1 s per 262k-row table even on meta
        self.embed = nn.Embedding(spec.vocab_size, spec.d_model, _weight=torch.empty(spec.vocab_size, spec.d_model))
        if spec.per_layer_input:
            self.per_layer = PerLayerInputs(spec, self.rec)
        self.layers = nn.ModuleList(Layer(spec, i, self.rec) for i in range(spec.n_layers))
        self.final_norm = RMSNorm(spec.d_model, spec.norm_eps)
        self.lm_head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)

    @property
    def cfg(self) -> ModelSpec:  # the name the runners and the streamer share
        return self.spec

    @property
    def device(self) -> torch.device:
        return self.final_norm.weight.device

    def points(self) -> list[str]:
        names = ["embed"]
        if self.spec.per_layer_input:
            names += self.per_layer.points()
        for layer in self.layers:
            names += layer.points()
        return names + ["final_norm", "logits.pre_softcap", "logits"]

    def set_kv_quant(self, fn: KVQuant | None) -> None:
        for layer in self.layers:
            if hasattr(layer.attn, "kv_quant"):
                layer.attn.kv_quant = fn

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).float()
        if self.spec.embed_scale != 1.0:
            x = x * torch.tensor(self.spec.embed_scale, dtype=torch.float32)
        self.rec("embed", x)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_norm(x)
        self.rec("final_norm", x)
        logits = self.lm_head(x)
        self.rec("logits.pre_softcap", logits)
        logits = softcap(logits, self.spec.final_softcap)
        self.rec("logits", logits)
        return logits

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start_pos: int = 0, cache: KVCache | None = None) -> torch.Tensor:
        """tokens (T,) → logits (T, V) for positions start_pos..start_pos+T-1."""
        tokens = tokens.to(self.device)
        pos = torch.arange(start_pos, start_pos + tokens.shape[0], device=self.device)
        x = self.embed_tokens(tokens)
        cache = cache if cache is not None else KVCache()  # layers may read earlier layers' K/V (shared KV)
        if self.spec.per_layer_input:
            cache.per_layer_inputs = self.per_layer(tokens, x)
        for layer in self.layers:
            x = layer(x, pos, cache)
        if cache is not None:
            cache.length = start_pos + tokens.shape[0]
        return self.head(x)


__all__ = ["Decoder", "KVCache"]
