"""The expected lane: the reference's weights in the candidate's format, run through the candidate's emulation.

Design notes
- Build (``build_lane``): for every quantized linear of the candidate, the reference's FP32
  weight (graph layout) is brought to the checkpoint's layout (the family's HF row
  permutation undone), quantized with the candidate's own scheme by the producer's rounding
  (``expected/quantize.py``), loaded by ``candidates.qlinear.build_linear`` with the
  candidate's options, and permuted back exactly as the candidate runner does. Static
  activation scales are calibrated on the reference's own input of each linear; NVFP4
  siblings share a weight global scale when the candidate's do (what llmcompressor writes).
- Run: the expected linears are swapped into a copy of the *reference's* graph over the same
  tensors (``graph.shared_copy``: norms, embeddings and everything else stay the reference's),
  with the candidate's KV-cache quantization (calibrated scales) and compute dtype, for three
  passes: the normal teacher-forced pass (accumulated error per point), the per-layer
  activation patching and the per-linear patching (local errors), exactly the passes the
  candidate gets. The reference's own model is never changed, so the localization may run on
  it meanwhile (two devices: ``pipeline``).
- Everything stays on the reference's device: its weights are quantized where they are (the
  same elementwise ops and amax on any device, so the same bits) and never copied to the host.
- Cost: quantizing the weights (seconds: ~100 M weights for Gemma 3 270M) plus one forward
  and one patching pass of the candidate's graph; runtime.json (``timings_s.expected_lane``) records it and
  docs/FAULTS.md lists the measured numbers.
- A streamed side (weights read layer by layer) has no resident graph to swap modules into:
  the lane is skipped with a note, and verdicts fall back to the fixed gate.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..capture import Captures
from ..graph import get_module, set_module, shared_copy
from ..graph.probe import linear_inputs
from .quantize import BACKEND, fused_groups, model_dtype, quantize_linears


@dataclass
class Lane:
    """The expected linears (canonical name → module) and what went into them."""

    modules: dict[str, nn.Module]
    scheme: str
    backend: str
    quantize_seconds: float


def _static_inputs(ref_runner: Any, names: Sequence[str], ref_caps: Captures) -> dict[str, torch.Tensor]:
    """The reference's input of each linear (probe hooks on each reference layer)."""
    out: dict[str, torch.Tensor] = {}
    ref_caps = ref_caps.on(ref_runner.model.device)
    layers = sorted({int(n.split(".")[1]) for n in names if n.startswith("layers.")})
    for i in layers:
        x_in = ref_caps.tensors.get("embed" if i == 0 else f"layers.{i - 1}.out")
        if x_in is None:
            continue
        got = linear_inputs(ref_runner.model, i, x_in, caps=ref_caps)
        out.update({k: v for k, v in got.items() if k in names})
    if "lm_head" in names and "final_norm" in ref_caps.tensors:  # the head's input is the final norm's output
        x = ref_caps.tensors["final_norm"]
        out["lm_head"] = x.detach().float().reshape(-1, x.shape[-1])
    return out


def build_lane(ref_runner: Any, cand_runner: Any, ref_caps: Captures) -> Lane:
    """Quantize the reference's weights like the candidate's (see module notes)."""
    from ..candidates.qlinear import build_linear
    from ..families import family_of

    t0 = time.perf_counter()
    cand = cand_runner.quant_linears()
    # compressed-tensors' own quantize functions make the lane: ModelOpt checkpoints (another producer, another
    # layout) keep the fixed gate, like GGUF candidates
    quantized = {n: m for n, m in cand.items() if getattr(getattr(m, "scheme", None), "weight", "dense") != "dense"
                 and getattr(m.scheme, "source", "compressed-tensors") == "compressed-tensors"}
    schemes = {n: m.scheme for n, m in quantized.items()}
    spec = ref_runner.config
    fam = family_of(spec)
    perms = {n: fam.hf_row_permutation(n, spec) for n in quantized}
    weights = {}
    for n in quantized:
        w = get_module(ref_runner.model, n).weight.detach().float()  # on the reference's device
        p = perms[n]
        weights[n] = w if p is None else w[torch.argsort(torch.as_tensor(p)).to(w.device)]  # checkpoint's row order
    need = [n for n, s in schemes.items() if s.act in ("fp8_static_tensor", "nvfp4")]
    inputs = _static_inputs(ref_runner, need, ref_caps) if need else {}
    fused = [g for g in fused_groups(list(quantized)) if _shares_global(quantized, g)]
    ck = getattr(cand_runner, "checkpoint", None)
    dtype = model_dtype(ck.config if ck is not None else {})
    tensors = quantize_linears(weights, schemes, inputs, dtype=dtype, fused=fused)
    modules: dict[str, nn.Module] = {}
    for n, t in tensors.items():
        bias = getattr(get_module(ref_runner.model, n), "bias", None)
        if bias is not None:
            b = bias.detach().float()
            t["bias"] = b if perms[n] is None else b[torch.argsort(torch.as_tensor(perms[n])).to(b.device)]
        lin = build_linear(n, t, schemes[n], cand_runner.options)
        lin.keep_weight = False  # three passes, then dropped: an FP32 copy of every weight would only raise the peak
        if perms[n] is not None:
            lin.permute_out_rows(perms[n])
        modules[n] = lin.to(ref_runner.device)
    counts: dict[str, int] = {}
    for s in schemes.values():
        counts[f"{s.weight}/{s.act}"] = counts.get(f"{s.weight}/{s.act}", 0) + 1
    label = ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items()))
    return Lane(modules, label, BACKEND, time.perf_counter() - t0)


def _shares_global(mods: Mapping[str, nn.Module], group: list[str]) -> bool:
    """True when the candidate's NVFP4 siblings carry one weight global scale (the producer fused them)."""
    gs = [getattr(mods[n], "weight_global", None) for n in group if n in mods]
    return len(gs) == len(group) and all(g is not None for g in gs) and all(torch.equal(g, gs[0]) for g in gs)


@contextlib.contextmanager
def swapped(ref_runner: Any, cand_runner: Any, lane: Lane) -> Iterator[Any]:
    """A runner over a copy of the reference's graph (``shared_copy``: the same tensors) with the expected linears,
    the candidate's KV-cache quantization and compute dtype; the reference's own model stays as it is."""
    from ..compute_dtype import install
    from ..kv_cache import FP8KVQuant
    from ..runner import ModelRunner

    model = shared_copy(ref_runner.model)
    for n, m in lane.modules.items():
        set_module(model, n, m)
    if getattr(cand_runner, "kv_quant", None) is not None:
        model.set_kv_quant(FP8KVQuant(source="calibrate"))
    hooks = install(model, getattr(cand_runner.options, "compute_dtype", "fp32"))
    runner = ModelRunner(ref_runner.path, device=ref_runner.device)
    runner.model, runner.tokenizer = model, ref_runner.tokenizer
    runner.kind = ref_runner.kind  # the lane's captures carry the reference's metadata, as before
    try:
        yield runner
    finally:
        hooks.remove()


def run_lane(ref_runner: Any, cand_runner: Any, lane: Lane, ids: Sequence[int], ref_caps: Captures,
             select: str | Sequence[str] = "*") -> tuple[Captures, list[dict], list[dict]]:
    """(captures of the normal pass, per-layer patching rows, per-linear patching rows) of the expected lane."""
    from ..localize import patch_layers

    with swapped(ref_runner, cand_runner, lane) as runner:
        caps = runner.run(ids, select=select, keep_device=True)  # compared on this device: no copy per point
        layers = patch_layers(ref_caps, runner, len(ids))
    modules = patch_expected_linears(ref_caps, ref_runner, lane)
    return caps, layers, modules


@torch.no_grad()
def patch_expected_linears(ref_caps: Captures, ref_runner: Any, lane: Lane) -> list[dict]:
    """Each expected linear on the reference's input of that linear, against the reference linear (relative L2)."""
    from ..comparison.metrics import rel_l2

    rm = ref_runner.model
    ref_caps = ref_caps.on(rm.device)
    pending = []
    for i in sorted({int(n.split(".")[1]) for n in lane.modules if n.startswith("layers.")}):
        x_in = ref_caps.tensors.get("embed" if i == 0 else f"layers.{i - 1}.out")
        if x_in is None:
            continue
        for name, x in linear_inputs(rm, i, x_in, caps=ref_caps).items():
            if name not in lane.modules:
                continue
            y_ref = get_module(rm, name)(x.to(rm.device)).float()
            y_exp = lane.modules[name](x.to(rm.device)).float()
            r = rel_l2(y_ref, y_exp)  # on the device; every number comes to the host at once below
            pending.append((name, i, torch.nan_to_num(r, nan=float("inf")).max()))
    worst = torch.stack([m for _, _, m in pending]).tolist() if pending else []
    return [{"module": name, "layer": i, "rel_l2": w} for (name, i, _), w in zip(pending, worst)]


__all__ = ["Lane", "build_lane", "patch_expected_linears", "run_lane", "swapped"]
