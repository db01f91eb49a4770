"""Local versus accumulated error: activation patching per layer and per linear module.

The normal comparison shows *accumulated* error: layer i's output differs because of layer i
and because of everything before it. Patching separates the two:
- per layer: the candidate's layer i runs on the *reference's* input to layer i; its output
  error is layer i's own (local) error. A layer whose accumulated error grows far beyond its
  local error only amplifies what came from earlier.
- per linear module: the candidate's quantized linear runs on the reference's input of that
  linear and is compared with the reference linear on the same input: the module's own
  quantization error, free of everything around it.

``patch`` runs both patchings and touches nothing but the runners (the pipeline runs it beside the
expected lane and the comparison); ``localize`` turns its rows into a ``Localization`` (per-layer
and per-module rows) for the run record and adds a ``culprit`` finding to the report; the
pipeline runs the audits next.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .capture import Captures, op_of
from .comparison import Finding, Report
from .comparison.metrics import cosine, rel_l2
from .comparison.record import Localization
from .comparison.routing import is_route_point
from .graph import get_module
from .graph.context import context_points, layer_cache
from .graph.probe import linear_inputs
from .kernels import on_device
from .runner import ModelRunner
from .spec import ModelSpec


def _agg_t(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """(min cosine over tokens, max relative L2 over tokens), NaN-aware: a float64 (2,) tensor where the inputs are
    (nothing waits for the device)."""
    c = cosine(ref, cand)
    r = rel_l2(ref, cand)
    return torch.stack([torch.nan_to_num(c, nan=-1.0).min(), torch.nan_to_num(r, nan=float("inf")).max()])


def _op_stats(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """(min cosine, max rel L2, α) of one patched op, computed on ``cand``'s device (the reference's row uploaded)."""
    ref = ref.to(cand.device)
    return torch.cat([_agg_t(ref, cand), _alpha_t(ref, cand).reshape(1)])


@torch.no_grad()
def patch_layers(ref_caps: Captures, cand_runner: ModelRunner, n_tokens: int) -> list[dict]:
    """Run each candidate layer on the reference's input; return per-layer local errors and per-op detail.

    The patched layer's points stay on its device and are reduced there (float64); the numbers of every
    layer come to the host at once at the end, so the device is never waited for point by point.
    """
    model = cand_runner.model
    assert model is not None
    dev = model.device
    ref_caps = ref_caps.on(dev)  # the reference's points where the layers run: no upload per point
    pos = torch.arange(n_tokens, device=dev)
    pending = []
    for i, layer in enumerate(model.layers):
        x_in = ref_caps["embed"] if i == 0 else ref_caps[f"layers.{i - 1}.out"]
        caps = Captures(token_ids=list(ref_caps.token_ids), keep_device=True)
        cache = layer_cache(model.cfg, ref_caps, i, dev)  # shared K/V, per-layer inputs: the reference's
        model.rec.captures = caps
        try:
            with on_device(dev):
                layer(x_in.to(dev), pos, cache)
        finally:
            model.rec.captures = None
        # expert ids are compared as sets, not here
        names = [n for n in caps.names() if n in ref_caps.tensors and not is_route_point(n)]
        out_name = f"layers.{i}.out"
        stats = torch.stack([_op_stats(ref_caps[n], caps[n]) for n in names + [out_name]])  # (ops + 1, 3)
        pending.append((i, names, stats))
    rows = []
    for i, names, stats in pending:
        vals = stats.tolist()
        ops = [{"op": op_of(n), "cosine": v[0], "rel_l2": v[1], "alpha": v[2]} for n, v in zip(names, vals)]
        rows.append({"layer": i, "local_cosine": vals[-1][0], "local_rel_l2": vals[-1][1], "ops": ops})
    return rows


@torch.no_grad()
def patch_linears(ref_caps: Captures, ref_runner: ModelRunner, cand_runner: ModelRunner) -> list[dict]:
    """Each candidate linear on the reference's input of that linear, against the reference linear.

    The inputs come from running each reference layer on its captured input with hooks on its
    linears (``graph.probe.linear_inputs``): MoE experts get the tokens routed to them. Both outputs
    are compared on the candidate's device; the numbers come to the host at once at the end.
    """
    rm, cm = ref_runner.model, cand_runner.model
    assert rm is not None and cm is not None
    ref_caps = ref_caps.on(rm.device)  # where the reference's layers run (the probe is kept with this store)
    pending = []
    for i in range(cm.cfg.n_layers):
        x_in = ref_caps.tensors.get("embed" if i == 0 else f"layers.{i - 1}.out")
        if x_in is None:
            continue
        for name, x in linear_inputs(rm, i, x_in, caps=ref_caps).items():
            r_lin, c_lin = get_module(rm, name), get_module(cm, name)
            # both sides are queued before either result is needed: on two devices they overlap
            y_ref_dev = r_lin(x.to(rm.device))
            y_cand = c_lin(x.to(cm.device)).float()
            y_ref = y_ref_dev.float().to(y_cand.device)
            nonfinite = (~torch.isfinite(y_cand)).sum().double().reshape(1)
            # best-fit scale α (cand ≈ α·ref): a scale bug shows as α far from 1 at high cosine
            stats = torch.cat([_agg_t(y_ref, y_cand), _alpha_t(y_ref, y_cand).reshape(1), nonfinite])
            pending.append((name, i, int(x.shape[0]), c_lin, stats))
    rows = []
    for name, i, n_rows, c_lin, stats in pending:
        cmin, rmax, alpha, nonfinite = stats.tolist()
        rows.append(
            {
                "module": name,
                "layer": i,
                "op": name.split(".", 2)[2],
                "cosine": cmin,
                "rel_l2": rmax,
                "alpha": alpha,
                "nonfinite": int(nonfinite),
                "rows": n_rows,
                "scheme": getattr(getattr(c_lin, "scheme", None), "weight", "dense"),
            }
        )
    return rows


@dataclass(frozen=True)
class Patched:
    """The rows of both patchings: per layer (``patch_layers``) and per linear (``patch_linears``)."""

    layers: list[dict]
    modules: list[dict]


def can_patch(ref_caps: Captures, spec: ModelSpec) -> bool:
    """Whether the captures hold every layer's input and output (not so with a narrowed ``--select``)."""
    need = ["embed"] + [f"layers.{i}.out" for i in range(spec.n_layers)]
    need += [p for i in range(spec.n_layers) for p in context_points(spec, i)]  # shared K/V, per-layer inputs
    return all(n in ref_caps.tensors for n in need)


@torch.no_grad()
def patch(ref_caps: Captures, ref_runner: ModelRunner, cand_runner: ModelRunner, n_tokens: int) -> Patched | None:
    """Both patchings; None when the captures lack a layer's input or output (``can_patch``)."""
    if not can_patch(ref_caps, ref_runner.config):
        return None
    return Patched(patch_layers(ref_caps, cand_runner, n_tokens), patch_linears(ref_caps, ref_runner, cand_runner))


def localize(
    report: Report,
    ref_runner: ModelRunner,
    cand_runner: ModelRunner,
    ids: Sequence[int],
    ref_caps: Captures,
    *,
    status: Callable[[str], None] | None = None,
    expected: tuple[list[dict], list[dict]] | None = None,
    patched: Patched | None = None,
) -> Localization | None:
    """Local vs accumulated error per layer and per module (returned), and a culprit finding (added to ``report``).

    ``expected``: the expected lane's (per-layer patching rows, per-linear rows) (``expected/lane.py``). With
    it the culprit is the first layer (execution order) whose local error is beyond what the format's noise
    explains, and its op the first beyond that noise (every layer ran on the reference's input, so a fault
    in every layer starts at the first); without it, the layer with the largest local
    error and the op where its error first jumps. Either way the layer with the largest local error is
    also reported on its own (``largest_local_error``). None when the captures lack a layer's input or
    output (a narrowed ``--select``). ``patched``: ``patch``'s rows when they were taken already.
    """
    from .comparison import noise

    patched = patched or patch(ref_caps, ref_runner, cand_runner, len(ids))
    if patched is None:
        return None
    layers, modules = patched.layers, patched.modules
    acc = {row["layer"]: row for row in _accumulated(report)}
    table = []
    prev_acc = 0.0
    for row in layers:
        a = acc.get(row["layer"], {})
        acc_err = a.get("rel_l2", float("nan"))
        worst_op = max(row["ops"], key=lambda o: _badness(o["rel_l2"]), default=None)
        amplified = acc_err - prev_acc if acc_err == acc_err else float("nan")
        table.append(
            {
                "layer": row["layer"],
                "local_cosine": row["local_cosine"],
                "local_rel_l2": row["local_rel_l2"],
                "accumulated_cosine": a.get("cosine", float("nan")),
                "accumulated_rel_l2": acc_err,
                "added_rel_l2": amplified,
                "worst_local_op": worst_op["op"] if worst_op else "",
                "verdict": _verdict(row["local_rel_l2"], acc_err, prev_acc),
            }
        )
        prev_acc = acc_err if acc_err == acc_err else prev_acc
    worst_modules = sorted(modules, key=lambda m: -_badness(m["rel_l2"]))
    result = Localization.from_rows(table, worst_modules,
                                    [o | {"layer": r["layer"]} for r in layers for o in r["ops"]])
    if not layers:
        return result
    largest = max(layers, key=lambda r: _badness(r["local_rel_l2"]))
    if _badness(largest["local_rel_l2"]) == 0:  # every layer bit-identical on the reference's input: no culprit
        return result
    median_local = sorted(r["local_rel_l2"] for r in layers)[len(layers) // 2]
    exp_local = {r["layer"]: r["local_rel_l2"] for r in expected[0]} if expected else {}
    exp_ops = noise.op_rows(layers, expected[0]) if expected else []
    exp_mod = {m["module"]: m["rel_l2"] for m in expected[1]} if expected else {}

    def beyond_layer(r: dict) -> bool:
        return noise.beyond_noise(r["local_rel_l2"], exp_local.get(r["layer"], float("nan"))) or any(
            o.beyond for o in exp_ops if o.layer == r["layer"])

    if expected:
        faulty = [r for r in layers if beyond_layer(r)]
        pick = faulty[0] if faulty else largest  # the first layer beyond noise: its inputs were the reference's
        wl = pick["layer"]
        worst_op = next((o.op for o in exp_ops if o.layer == wl and o.beyond), None) or _first_jump(pick["ops"])
        severe = bool(faulty)
    else:
        pick, wl = largest, largest["layer"]
        worst_op = _first_jump(pick["ops"])
        severe = _badness(pick["local_rel_l2"]) > max(0.2, 5 * _badness(median_local))
    in_layer = [m for m in modules if m["layer"] == wl]
    worst_mod = max(in_layer, key=lambda m: _badness(m["rel_l2"]), default=None)
    if expected:
        e = exp_local.get(wl, float("nan"))
        detail = (
            f"Layer {wl}'s own error (its layer run on the reference's input) is rel L2 {pick['local_rel_l2']:.3g} "
            f"where the format's noise gives {e:.3g} (the reference's weights in the candidate's format)"
            + (f"; the first op beyond that noise is {worst_op}." if severe else "; no layer is beyond that noise.")
        )
    else:
        detail = (
            f"Layer {wl} has the largest local error (rel L2 {pick['local_rel_l2']:.3g}, cosine "
            f"{pick['local_cosine']:.4f}) when run on the reference's own input; median layer: "
            f"{median_local:.3g}. Inside it, the error first jumps at {worst_op or 'n/a'}."
        )
    if worst_mod is not None:
        em = exp_mod.get(worst_mod["module"])
        detail += (
            f" Its worst linear is {worst_mod['module']} ({worst_mod['scheme']}; rel L2 {worst_mod['rel_l2']:.3g}"
            + (f" vs expected {em:.3g}" if em is not None else "")
            + f", alpha {worst_mod['alpha']:.4g})."
        )
    if expected:
        tag = " (beyond the format's noise)" if severe else " (within the format's noise)"
    else:
        tag = " (local error far above the other layers)" if severe else " (largest local error; no outlier)"
    report.add_finding(
        Finding(
            severity="critical" if severe else "info",
            kind="culprit",
            title=f"Culprit: layer {wl}, {worst_op or 'layer output'}" + tag,
            point=f"layers.{wl}.{worst_op}" if worst_op else f"layers.{wl}.out",
            layer=wl,
            op=worst_op,
            token_index=None,
            detail=detail,
            evidence={
                "local_rel_l2": pick["local_rel_l2"],
                "expected_local_rel_l2": exp_local.get(wl),
                "median_local_rel_l2": median_local,
                "worst_module": worst_mod,
                "source": "localization",
                "noise_aware": bool(expected),
            },
        )
    )
    ll = largest["layer"]
    report.add_finding(
        Finding(
            severity="info",
            kind="largest_local_error",
            title=f"Largest local error: layer {ll}, {_first_jump(largest['ops']) or 'layer output'} "
            f"(rel L2 {largest['local_rel_l2']:.3g}" + (f" vs expected {exp_local[ll]:.3g})" if ll in exp_local
                                                       else ")"),
            point=f"layers.{ll}.out",
            layer=ll,
            op=_first_jump(largest["ops"]),
            detail=f"The layer whose own error (run on the reference's input) is the largest; median layer "
            f"{median_local:.3g}. The largest error is not always the fault: the culprit finding says which layer "
            "the evidence and the format's noise point at.",
            evidence={"local_rel_l2": largest["local_rel_l2"], "expected_local_rel_l2": exp_local.get(ll)},
        )
    )
    return result  # why, not only where: the pipeline runs the audits next (audit.after_localize)


def _alpha_t(ref: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Best-fit scale cand ≈ α·ref over the whole tensor (NaN-safe): a scale bug is α far from 1 at high cosine.
    A float64 scalar tensor where the inputs are."""
    r, c = ref.double().flatten(), torch.nan_to_num(cand.double().flatten())
    rr = r @ r
    return torch.where(rr > 0, (r @ c) / torch.where(rr > 0, rr, torch.ones_like(rr)), torch.full_like(rr, math.nan))


def _badness(x: float) -> float:
    return float("inf") if x != x else x


def _first_jump(ops: list[dict]) -> str | None:
    """The first op (execution order) whose error is at least half the layer's worst op error."""
    if not ops:
        return None
    worst = max(_badness(o["rel_l2"]) for o in ops)
    for o in ops:
        if _badness(o["rel_l2"]) >= 0.5 * worst:
            return o["op"]
    return None


def _verdict(local: float, acc: float, prev_acc: float) -> str:
    if local != local or local == float("inf"):
        return "non-finite locally"
    if acc != acc:
        return ""
    if acc - prev_acc > 3 * max(local, 1e-6) and acc > 0.05:
        return "amplifies earlier error"
    if local > 0.5 * acc and local > 0.05:
        return "source of error"
    return ""


def _accumulated(report: Report) -> list[dict]:
    df = report.df
    out = []
    for i in sorted({int(x) for x in df["layer"].dropna().unique()}):
        sub = df[(df["point"] == f"layers.{i}.out")]
        if sub.empty:
            continue
        out.append({"layer": i, "cosine": float(sub["cosine"].min()), "rel_l2": float(sub["rel_l2"].max())})
    return out


__all__ = ["Patched", "can_patch", "localize", "patch", "patch_layers", "patch_linears"]
