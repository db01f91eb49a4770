"""Expert routing agreement: which experts each side's router chose, per MoE layer and token.

Design note
-----------
A mixture of experts amplifies small numeric differences into discrete ones: when two
experts' scores are close, quantization noise in the router's input can make the candidate
pick another expert for a token, and everything downstream of that token then differs by
more than any single weight explains. Activation cosines show the consequence; this module
shows the cause. For every ``layers.{i}.mlp.route`` point (the chosen expert ids, best first,
recorded as floats by ``graph/ffn.py``) it computes, per token, the overlap of the two chosen
sets ``|ref ∩ cand| / k`` (order-free: the same experts with swapped ranks route the same
way) and the first (layer, token) where the sets differ. Pure functions over ``Captures``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
import torch

from layerbisect.capture import Captures, layer_of

ROUTE_OP = "mlp.route"
ROUTING_COLUMNS = ("layer", "token_index", "token_id", "overlap", "same_set", "ref_experts", "cand_experts")


def is_route_point(name: str) -> bool:
    return name.endswith("." + ROUTE_OP) and layer_of(name) is not None


@dataclass(frozen=True)
class RoutingResult:
    """Routing agreement of one MoE layer over the compared tokens."""

    layer: int
    point: str
    top_k: int
    n_tokens: int
    mean_overlap: float  # mean over tokens of |ref ∩ cand| / k
    same_set_share: float  # share of tokens whose chosen expert sets are identical
    first_diff_token: int | None  # token index of the first token routed differently
    first_diff_ref: tuple[int, ...] = ()
    first_diff_cand: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def overlap(ref_ids: torch.Tensor, cand_ids: torch.Tensor) -> torch.Tensor:
    """Per-row |ref ∩ cand| / k for two (T, k) integer tensors of expert ids (a set comparison)."""
    k = ref_ids.shape[-1]
    hits = (ref_ids[:, :, None] == cand_ids[:, None, :]).any(-1).sum(-1)
    return hits.double() / k


def compare_routing(ref: Captures, cand: Captures, pos: Sequence[int],
                    token_ids: Sequence[int]) -> tuple[list[RoutingResult], pd.DataFrame]:
    """Routing agreement of every MoE layer both sides recorded, at the compared positions."""
    results: list[RoutingResult] = []
    rows: dict[str, list[Any]] = {c: [] for c in ROUTING_COLUMNS}
    if not pos:
        return results, pd.DataFrame(columns=list(ROUTING_COLUMNS))
    idx = torch.tensor(list(pos), dtype=torch.long)
    for name in ref.names():
        if not is_route_point(name) or name not in cand.tensors or name not in ref.tensors:
            continue
        r, c = ref.tensors[name].cpu(), cand.tensors[name].cpu()  # a store may be kept on its device
        if r.shape[1:] != c.shape[1:] or max(pos) >= min(r.shape[0], c.shape[0]):
            continue
        ri = torch.nan_to_num(r[idx], nan=-1).round().long()
        ci = torch.nan_to_num(c[idx], nan=-2).round().long()  # NaN ids never match
        ov = overlap(ri, ci)
        same = ov == 1.0
        diff = [j for j, s in enumerate(same.tolist()) if not s]
        layer = layer_of(name)
        assert layer is not None
        first = diff[0] if diff else None
        results.append(RoutingResult(
            layer=layer, point=name, top_k=int(r.shape[1]), n_tokens=len(pos),
            mean_overlap=float(ov.mean()), same_set_share=float(same.double().mean()),
            first_diff_token=pos[first] if first is not None else None,
            first_diff_ref=tuple(ri[first].tolist()) if first is not None else (),
            first_diff_cand=tuple(ci[first].tolist()) if first is not None else (),
        ))
        for j, p in enumerate(pos):
            rows["layer"].append(layer)
            rows["token_index"].append(int(p))
            rows["token_id"].append(int(token_ids[j]) if j < len(token_ids) else -1)
            rows["overlap"].append(float(ov[j]))
            rows["same_set"].append(bool(same[j]))
            rows["ref_experts"].append(" ".join(str(x) for x in ri[j].tolist()))
            rows["cand_experts"].append(" ".join(str(x) for x in ci[j].tolist()))
    return results, pd.DataFrame(rows, columns=list(ROUTING_COLUMNS))


def first_flip(results: Sequence[RoutingResult]) -> RoutingResult | None:
    """The earliest (layer, then token) routing difference, or None when every token routes the same."""
    flips = [r for r in results if r.first_diff_token is not None]
    return min(flips, key=lambda r: (r.layer, r.first_diff_token)) if flips else None


def summary_rows(results: Sequence[RoutingResult]) -> list[dict[str, Any]]:
    """One plain row per MoE layer for the report's routing table."""
    return [
        {
            "layer": r.layer,
            "top_k": r.top_k,
            "tokens": r.n_tokens,
            "mean_topk_overlap": round(r.mean_overlap, 4),
            "same_experts_share": round(r.same_set_share, 4),
            "first_token_routed_differently": "-" if r.first_diff_token is None else r.first_diff_token,
            "ref_experts_there": " ".join(map(str, r.first_diff_ref)) or "-",
            "cand_experts_there": " ".join(map(str, r.first_diff_cand)) or "-",
        }
        for r in results
    ]


def mean_overlap(results: Sequence[RoutingResult]) -> float:
    return float(sum(r.mean_overlap for r in results) / len(results)) if results else math.nan


__all__ = ["ROUTE_OP", "ROUTING_COLUMNS", "RoutingResult", "compare_routing", "first_flip", "is_route_point",
           "mean_overlap", "overlap", "summary_rows"]
