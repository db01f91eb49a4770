"""Weight error of a GGUF candidate per tensor, per GGML type and per layer; faults judged against the type.

Design notes
- A llama.cpp quant is *meant* to differ from its source: Q2_K weights sit ~10 dB below the
  reference (cosine ≈ 0.95), Q8_0 ~45 dB. The checkpoint audit's fixed thresholds (cosine <
  0.95 is a layout fault) would call every Q2_K tensor broken and miss a broken Q8_0 one. So
  for a GGUF candidate a tensor is judged against what its own type does elsewhere in the
  same file, and every block against the other blocks of its tensor:
    * **blocks** (``block_errors``): the tensor is cut into its type's quant blocks (32 or
      256 elements along a row: ``gguf.GGML_QUANT_SIZES``) and each block's relative error
      ‖c_b − r_b‖ / ‖r_b‖ is taken. Quantization noise is even across blocks (max/median ≤ 2.7
      on every Gemma 3 270M tensor, Q8_0 to IQ3_S, and ≤ 1.4 on Gaussian weights); a block
      whose scale bits were changed is off by its whole magnitude. A block beyond
      ``BLOCK_RATIO`` × the tensor's median block error and beyond ``BLOCK_MIN`` is
      ``corrupt_blocks``, named with its row and block index (the position in the file).
    * **tensors** (``judge_tensors``): SQNR (10·log10 ‖r‖²/‖c − r‖², dB) against the median of
      the tensors with the same (reference type → candidate type) in this file. Within a group
      tensors spread by ≤ 3.2 dB on Gemma 3 270M; more than ``GROUP_DB`` below the median
      (twice the typical error) is a fault; below ``FLOOR_DB`` (noise as large as the
      signal's half) is one whatever the group says (a whole type broken the same way).
      The layout hypotheses of the checkpoint audit (transposed, Q/K rope permutation) then
      name a cause; otherwise ``quant_error_outlier``.
  Identical tensors (same bytes on both sides: a requantization that kept the type) have
  no error (SQNR +inf) and are listed as such.
- Summaries (``type_summary``, ``layer_table``) are what a user decides the quant mix from:
  per GGML type (and per reference → candidate type pair) the tensors, parameters, bits per
  weight, SQNR and — when activation patching ran — the error each module adds to its own
  output on the reference's input (the cost on real activations, not only in the weights);
  per layer, each tensor's type and SQNR and which type costs that layer the most.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import gguf
import torch

BLOCK_RATIO = 6.0  # a block's error this many times the tensor's median block error: not noise
BLOCK_MIN = 0.5  # ... and at least half the block's own norm (Q2_K's median block error is ~0.3)
GROUP_DB = 6.0  # SQNR this far below the median of its (ref type → cand type) group: 2x the error
GROUP_MIN = 3  # tensors a group needs before its median means anything
FLOOR_DB = 3.0  # error above ~0.7x the signal: a fault for any quant type llama.cpp makes


def sqnr_db(ref: torch.Tensor, cand: torch.Tensor) -> float:
    """10·log10(‖r‖² / ‖c − r‖²) in dB over the whole tensor; +inf when identical, -inf for a zero reference."""
    r, c = ref.double().flatten(), cand.double().flatten()
    noise = float(((c - r) ** 2).sum())
    sig = float((r * r).sum())
    if noise == 0:
        return math.inf
    if sig == 0:
        return -math.inf
    return 10.0 * math.log10(sig / noise)


def block_size(type_name: str) -> int:
    try:
        return int(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]][0])
    except KeyError:
        return 1


def bits_per_weight(type_name: str) -> float:
    try:
        b, s = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    except KeyError:
        return math.nan
    return 8.0 * s / b


def block_errors(ref: torch.Tensor, cand: torch.Tensor, block: int) -> torch.Tensor:
    """Relative error of each quant block, (rows, blocks_per_row) float64; ``ref``/``cand`` (rows, cols).

    The denominator is floored at 1e-3 of the median block norm, so an all-zero reference
    block with a non-zero candidate is a large (finite) error, not inf.
    """
    rows = max(1, (1 << 22) // max(1, ref.shape[1]))  # float64 in row slices (embeddings have 262k rows)
    rn_parts, dn_parts = [], []
    for a in range(0, ref.shape[0], rows):
        r = ref[a : a + rows].detach().double().reshape(-1, ref.shape[1] // block, block)
        d = cand[a : a + rows].detach().double().reshape(r.shape) - r
        rn_parts.append(r.norm(dim=-1))
        dn_parts.append(d.norm(dim=-1))
    rn, dn = torch.cat(rn_parts), torch.cat(dn_parts)
    floor = max(float(rn.median()) * 1e-3, 1e-30)
    return dn / rn.clamp_min(floor)


def block_outliers(ref: torch.Tensor, cand: torch.Tensor, type_name: str, limit: int = 8) -> dict[str, Any] | None:
    """Blocks far off their tensor's quantization noise (see the module notes), or None.

    Returns {"n_blocks", "n_bad", "median", "worst": [{"row", "block", "cols", "rel_err"}, ...]}
    for 2-D tensors whose columns divide into the type's blocks.
    """
    bs = block_size(type_name)
    if ref.ndim != 2 or bs <= 1 or ref.shape[1] % bs:
        return None
    e = block_errors(ref, cand, bs)
    med = float(e.median())
    thr = max(BLOCK_RATIO * med, BLOCK_MIN)
    bad = torch.nonzero(e > thr)
    if not len(bad):
        return None
    vals = e[bad[:, 0], bad[:, 1]]
    order = torch.argsort(vals, descending=True)[:limit]
    worst = [{"row": int(bad[k, 0]), "block": int(bad[k, 1]), "cols": [int(bad[k, 1]) * bs, (int(bad[k, 1]) + 1) * bs],
              "rel_err": float(vals[k])} for k in order]
    return {"n_blocks": int(e.numel()), "n_bad": int(len(bad)), "median": med, "threshold": thr, "worst": worst,
            "block_size": bs}


def group_key(row: Any) -> tuple[str, str]:
    return (row.ref_scheme or "?", row.scheme)


def judge_tensors(rows: Sequence[Any]) -> list[Any]:
    """Rows (``TensorAudit``, status "ok", finite SQNR) whose SQNR is an outlier for their type; sets no field.

    See the module notes: ``GROUP_DB`` below the (ref type → cand type) group's median with
    at least ``GROUP_MIN`` tensors in the group, or below ``FLOOR_DB`` in any case.
    """
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if math.isfinite(r.sqnr_db):
            groups[group_key(r)].append(r.sqnr_db)
    med = {k: statistics.median(v) for k, v in groups.items() if len(v) >= GROUP_MIN}
    out = []
    for r in rows:
        if r.status != "ok" or not math.isfinite(r.sqnr_db) or r.scheme in ("F32",):
            continue
        m = med.get(group_key(r))
        below = m is not None and r.sqnr_db < m - GROUP_DB
        if below or r.sqnr_db < FLOOR_DB:
            r.evidence["group_median_sqnr_db"] = m
            r.evidence["group"] = "→".join(group_key(r))
            out.append(r)
    return out


# ---------------------------------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------------------------------


def _numel(shape: Iterable[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _fmt_db(x: float) -> str:
    return "=" if x == math.inf else f"{x:.1f}"


def type_summary(rows: Sequence[Any], modules: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """One row per (reference type → candidate type) of the compared weight tensors, worst SQNR first.

    ``modules``: activation patching's per-module rows (``localize.patch_linears``), whose
    ``rel_l2`` is each linear's own output error on the reference's input.
    """
    mod_err: dict[str, float] = {m["module"] + ".weight": m["rel_l2"] for m in modules}
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in rows:
        if r.status in ("missing", "extra") or r.kind == "norm" and r.scheme == "F32":
            continue
        groups[group_key(r)].append(r)
    out = []
    for (rt, ct), rs in groups.items():
        sq = [r.sqnr_db for r in rs]
        finite = [x for x in sq if math.isfinite(x)]
        worst = min(rs, key=lambda r: r.sqnr_db)
        errs = [mod_err[r.name] for r in rs if r.name in mod_err]
        params = sum(_numel(r.shape) for r in rs)
        out.append({
            "ref_type": rt,
            "cand_type": ct,
            "tensors": len(rs),
            "params": params,
            "cand_bpw": round(bits_per_weight(ct), 3),
            "ref_bpw": round(bits_per_weight(rt), 3),
            "identical": sum(1 for x in sq if x == math.inf),
            "median_sqnr_db": statistics.median(finite) if finite else math.inf,
            "min_sqnr_db": min(sq),
            "mean_rel_err": statistics.fmean(r.rel_err for r in rs),
            "mean_module_out_rel_l2": statistics.fmean(errs) if errs else math.nan,
            "worst_tensor": worst.name if math.isfinite(worst.sqnr_db) else "",
        })
    out.sort(key=lambda d: (d["median_sqnr_db"], d["cand_type"]))
    return out


def cand_type_summary(rows: Sequence[Any], modules: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """``type_summary`` folded over the reference types: one row per candidate GGML type."""
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in type_summary(rows, modules):
        by[d["cand_type"]].append(d)
    out = []
    for ct, ds in by.items():
        n = sum(d["tensors"] for d in ds)
        p = sum(d["params"] for d in ds)
        sq = [d["median_sqnr_db"] for d in ds]
        mo = [(d["mean_module_out_rel_l2"], d["tensors"]) for d in ds if math.isfinite(d["mean_module_out_rel_l2"])]
        out.append({
            "cand_type": ct, "tensors": n, "params": p, "bpw": ds[0]["cand_bpw"],
            "from": ", ".join(f"{d['ref_type']}×{d['tensors']}" for d in ds),
            "median_sqnr_db": min(sq), "min_sqnr_db": min(d["min_sqnr_db"] for d in ds),
            "mean_module_out_rel_l2": (sum(a * w for a, w in mo) / sum(w for _, w in mo)) if mo else math.nan,
        })
    out.sort(key=lambda d: (d["median_sqnr_db"], d["cand_type"]))
    return out


def layer_table(rows: Sequence[Any], modules: Sequence[dict[str, Any]] = (),
                layers: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Per layer: each weight's candidate type and SQNR ("Q3_K 16.3"; "=" when identical), the
    layer's local error (activation patching) and the type whose modules add the most output error there."""
    mod = {m["module"]: m for m in modules}
    local = {r["layer"]: r for r in layers}
    by_layer: dict[int, dict[str, Any]] = defaultdict(dict)
    cost: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.layer is None or r.status in ("missing", "extra") or not r.name.endswith(".weight"):
            continue
        if r.kind == "norm" and r.scheme == "F32":
            continue
        by_layer[r.layer][r.op] = f"{r.scheme} {_fmt_db(r.sqnr_db)}"
        m = mod.get(r.name.removesuffix(".weight"))
        if m is not None and math.isfinite(m["rel_l2"]):
            cost[r.layer][r.scheme].append(m["rel_l2"])
    out = []
    for i in sorted(by_layer):
        row: dict[str, Any] = {"layer": i, **by_layer[i]}
        if i in local:
            row["local_rel_l2"] = local[i].get("local_rel_l2", math.nan)
        if cost[i]:
            t, v = max(((t, statistics.fmean(v)) for t, v in cost[i].items()), key=lambda x: x[1])
            row["costliest_type"] = f"{t} (module out rel L2 {v:.3g})"
        out.append(row)
    return out


def tensor_rows(audit: Any) -> list[dict[str, Any]]:
    """One row per tensor that is not F32 in the candidate: names, both types, and the four numbers."""
    return [{"name": r.name, "tensor": r.evidence.get("gguf_tensor", ""), "ref_type": r.ref_scheme,
             "cand_type": r.scheme, "cosine": r.cosine, "rel_err": r.rel_err, "sqnr_db": r.sqnr_db,
             "alpha": r.alpha, "status": r.status, "cause": r.cause}
            for r in audit.rows if r.status != "extra" and r.scheme not in ("F32",)]


def gguf_sections(audit: Any, localization: Any = None) -> tuple[Any, ...]:
    """The report sections of a GGUF candidate's weight audit (+ activation patching's rows when given)."""
    from dataclasses import asdict

    from ..comparison.sections import Section

    modules = [asdict(m) for m in getattr(localization, "modules", ())]
    layers = [asdict(m) for m in getattr(localization, "layers", ())]
    by_type = cand_type_summary(audit.rows, modules)
    by_pair = type_summary(audit.rows, modules)
    per_layer = layer_table(audit.rows, modules, layers)
    tensors = tensor_rows(audit)
    return (
        Section.from_records(
            "gguf-types", "Weight error per GGML type (candidate vs reference)", by_type,
            brief_rows=len(by_type), brief=("cand_type", "tensors", "bpw", "from", "median_sqnr_db", "min_sqnr_db",
                                            "mean_module_out_rel_l2"),
            note="SQNR = 10·log10(‖ref‖²/‖cand−ref‖²) per tensor, dB (higher is better; ~6 dB per bit); bpw: bits "
            "per weight of the type; mean_module_out_rel_l2: each linear's own output error on the reference's "
            "input (activation patching). Worst type first.",
        ),
        Section.from_records(
            "gguf-type-pairs", "Weight error per reference → candidate type", by_pair, brief_rows=len(by_pair),
            note="identical: tensors whose bytes did not change (a requantization that kept the type).",
        ),
        Section.from_records(
            "gguf-layers", "Weight error per layer (candidate type and SQNR in dB per tensor)", per_layer,
            brief_rows=len(per_layer),
            note="'=' marks a tensor identical to the reference's; costliest_type: the type whose linears add the "
            "most output error in that layer.",
        ),
        Section.from_records(
            "gguf-tensors", "Weight audit per tensor (GGML types)", tensors, rank_by="rel_err", brief_rows=12,
            brief=("name", "tensor", "ref_type", "cand_type", "sqnr_db", "cosine", "alpha", "cause"),
            note="every tensor that is not F32 in the candidate, worst first in brief views; sqnr_db inf: identical.",
        ),
    )


def add_gguf_sections(report: Any, audit: Any, localization: Any = None) -> None:
    for s in gguf_sections(audit, localization):
        report.add_section(s)


__all__ = [
    "add_gguf_sections",
    "gguf_sections",
    "tensor_rows",
    "block_errors",
    "block_outliers",
    "bits_per_weight",
    "cand_type_summary",
    "judge_tensors",
    "layer_table",
    "sqnr_db",
    "type_summary",
]
