"""Synthetic capture pairs with planted bugs: for tests, docs screenshots and self-checks.

A fake model's captures under the canonical names (random (T, F) tensors, a residual stream
that accumulates), a candidate = reference + controlled relative noise that grows slowly
with depth, and helpers that plant the bugs we have seen in the wild (docs seeds): a NaN
that then spreads downstream, a scale applied once per layer (norm blow-up until the logits
hit the softcap wall), a dropped point.
"""

from __future__ import annotations

import math

import torch

from layerbisect.capture import Captures, layer_of
from layerbisect.comparison.comparator import ModelInfo


def _feature_size(name: str, d: int, d_ff: int, vocab: int, n_head: int, T: int) -> int:
    if name.startswith("logits"):
        return vocab
    if name.endswith(("mlp.gate", "mlp.up", "mlp.act")):
        return d_ff
    if name.endswith("attn.scores"):
        return n_head * T
    return d


def _points(n_layers: int, d: int, d_ff: int, vocab: int, n_head: int, attn_softcap: float | None) -> list[str]:
    """The capture points of a llama-like graph of these sizes, derived from the graph itself."""
    from layerbisect.graph import capture_points
    from layerbisect.spec import AttentionSpec, DenseFFNSpec, LayerSpec, ModelSpec, Rope

    hd = d // n_head
    layers = tuple(LayerSpec(i, AttentionSpec(n_head, n_head, hd, Rope(dim=hd), 1.0, softcap=attn_softcap),
                             DenseFFNSpec(d_ff)) for i in range(n_layers))
    return list(capture_points(ModelSpec("synthetic", "synthetic", vocab, d, layers)))


def synthetic_pair(
    *,
    n_layers: int = 4,
    T: int = 8,
    d: int = 32,
    d_ff: int = 64,
    vocab: int = 128,
    n_head: int = 2,
    noise: float = 1e-3,
    noise_growth: float = 0.15,
    final_softcap: float | None = 30.0,
    attn_softcap: float | None = None,
    seed: int = 0,
) -> tuple[Captures, Captures, ModelInfo]:
    """Reference and candidate captures of a fake model; the candidate is ref + relative noise."""
    g = torch.Generator().manual_seed(seed)
    names = _points(n_layers, d, d_ff, vocab, n_head, attn_softcap)
    token_ids = [int(x) for x in torch.randint(0, vocab, (T,), generator=g)]
    ref = Captures(token_ids=list(token_ids), meta={"side": "ref"})
    cand = Captures(token_ids=list(token_ids), meta={"side": "cand"})
    resid = torch.randn(T, d, generator=g)
    for _k, name in enumerate(names):
        F = _feature_size(name, d, d_ff, vocab, n_head, T)
        if name == "logits.pre_softcap":  # its own stream: the logits do not depend on how many points precede
            x = 3.0 * torch.randn(T, F, generator=torch.Generator().manual_seed(seed + 1))
        elif name == "logits":
            pre = ref.tensors["logits.pre_softcap"]
            x = final_softcap * torch.tanh(pre / final_softcap) if final_softcap else pre.clone()
        elif name.endswith(".out") or name.endswith("attn_residual") or name == "embed":
            resid = resid + 0.3 * torch.randn(T, d, generator=g)
            x = resid.clone()
        else:
            x = torch.randn(T, F, generator=g)
        ref.record(name, x)
        layer = layer_of(name)
        depth = (layer + 1) if layer is not None else (0 if name == "embed" else n_layers + 1)
        rel = noise * (1.0 + noise_growth * depth)
        if name == "logits":
            pre_c = cand.tensors["logits.pre_softcap"]
            xc = final_softcap * torch.tanh(pre_c / final_softcap) if final_softcap else pre_c.clone()
        elif name == "logits.pre_softcap":
            xc = x + rel * x.std() * torch.randn(T, F, generator=torch.Generator().manual_seed(seed + 2))
        else:
            xc = x + rel * x.std() * torch.randn(T, F, generator=g)
        cand.record(name, xc)
    info = ModelInfo("synthetic", n_layers, final_softcap=final_softcap, attn_softcap=attn_softcap, vocab_size=vocab)
    return ref, cand, info


def plant_nan(cand: Captures, point: str, token: int, *, spread: bool = True) -> None:
    """A NaN at (point, token); with ``spread`` every later point gets NaN at tokens ≥ token (causal)."""
    names = cand.names()
    start = names.index(point)
    cand.tensors[point][token, 0] = math.nan
    if spread:
        for name in names[start + 1 :]:
            cand.tensors[name][token:, :] = math.nan


def plant_growing_scale(
    cand: Captures, from_layer: int, factor: float = 2.0, *, final_softcap: float | None = None
) -> None:
    """Multiply layer i ≥ from_layer by factor^(i − from_layer + 1): a scale applied once per layer.

    The final norm would undo it; a broken model passes it on, so ``logits.pre_softcap`` gets the
    last layer's factor too and ``logits`` is re-capped, driving the logits into the wall.
    """
    last = 1.0
    for name in cand.names():
        layer = layer_of(name)
        if layer is not None and layer >= from_layer:
            last = factor ** (layer - from_layer + 1)
            cand.tensors[name] = cand.tensors[name] * last
    if "logits.pre_softcap" in cand.tensors:
        pre = cand.tensors["logits.pre_softcap"] * last
        cand.tensors["logits.pre_softcap"] = pre
        if "logits" in cand.tensors:
            cand.tensors["logits"] = final_softcap * torch.tanh(pre / final_softcap) if final_softcap else pre.clone()


def saturate_logits(cand: Captures, cap: float, scale: float = 50.0) -> None:
    """Drive the candidate's logits into the softcap wall (pre-softcap × scale, then re-cap)."""
    pre = cand.tensors["logits.pre_softcap"] * scale
    cand.tensors["logits.pre_softcap"] = pre
    cand.tensors["logits"] = cap * torch.tanh(pre / cap)
