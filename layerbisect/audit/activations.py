"""Static activation and KV-cache scales against the activations the prompt actually produces.

Design notes
- A static scale fixes the largest value a quantizer can represent; activations beyond it
  saturate (the producer clamps) or overflow (a kernel that casts without saturating gives
  NaN). We can predict both before they show: take the *reference's* input of each quantized
  linear (as the localizer does: each reference layer run on its captured input with hooks on
  its linears, ``graph.probe``) and compare its amax with what the scale can hold:
      FP8 static (``input_scale`` s, a multiplier):           |x| ≤ 448·s
      NVFP4 static (``input_global_scale`` gs, a divisor):   block amax ≤ 6·448/gs
                                   (beyond it the E4M3 block scale gs·amax/6 exceeds 448)
      FP8 KV cache (``k_scale``/``v_scale``, multipliers):   |k|, |v| ≤ 448·scale
  The ratio amax/limit is the headroom used: ≤ 1 fits; a little above 1 is the usual
  clipping of a scale calibrated on other text (warning); far above means a wrong scale
  (critical: the run is wrong, and NaN in engines that do not saturate).
- ``headroom_rows`` takes the captures and the runners and returns rows; findings are
  built from the rows. Only reference layers run (to probe the linears' inputs).
"""

from __future__ import annotations

import math
from typing import Any

from ..comparison.findings import Finding

FP8_MAX = 448.0
E2M1_MAX = 6.0
WARN_RATIO = 1.25  # a static scale calibrated on other text clips the prompt by a few percent: not worth a line
CRITICAL_RATIO = 4.0  # a calibration on other text overshoots by tens of percent, not by 4x

def static_limit(lin: Any) -> tuple[str, float] | None:
    """(kind, largest representable input magnitude) of a linear with a static activation scale, else None."""
    mode = getattr(lin, "act_mode", "none")
    if mode == "fp8_static_tensor" and getattr(lin, "input_scale", None) is not None:
        return "fp8 input_scale", FP8_MAX * float(lin.input_scale)
    if mode == "nvfp4" and not getattr(lin, "observed_global", True) and lin.input_global_scale is not None:
        gs = float(lin.input_global_scale)
        return "nvfp4 input_global_scale", (FP8_MAX * E2M1_MAX / gs) if gs > 0 else math.inf
    return None


def headroom_rows(ref_caps: Any, cand_runner: Any, ref_runner: Any) -> list[dict[str, Any]]:
    """One row per linear with a static activation scale: input amax on the prompt vs the scale's limit.

    The input of each linear is the reference's (``graph.probe.linear_inputs`` on each layer's
    captured input), as the localizer uses it.
    """
    from ..graph.probe import linear_inputs

    lins = cand_runner.quant_linears()
    ref_caps = ref_caps.on(ref_runner.model.device)  # the probe is kept with this store (the localizer's too)
    order = {name: j for j, name in enumerate(lins)}  # execution order (names only: nothing is built)
    by_layer: dict[int, list[str]] = {}
    for name in lins:
        if name.startswith("layers."):
            by_layer.setdefault(int(name.split(".")[1]), []).append(name)
    rows = []
    # one walk over the layers: the candidate's layer i (its static scales) beside the reference's layer i
    # (its linears' inputs), so a streamed model reads each layer once and keeps one per side alive
    for li, names in sorted(by_layer.items()):
        static = {name: lim for name in names if (lim := static_limit(lins[name])) is not None}
        x_in = ref_caps.tensors.get("embed" if li == 0 else f"layers.{li - 1}.out")
        if not static or x_in is None:
            continue
        inputs = linear_inputs(ref_runner.model, li, x_in, caps=ref_caps)
        for name, (kind, limit) in static.items():
            x = inputs.get(name)
            if x is None:
                continue
            x = x.float()
            amax = float(x.abs().max())
            if kind.startswith("nvfp4"):
                blocks = x.reshape(-1, x.shape[-1] // 16, 16).abs().amax(-1)
                over = float((blocks > limit).float().mean())
            else:
                over = float((x.abs() > limit).float().mean())
            rows.append({
                "module": name, "layer": li, "op": name.split(".", 2)[2], "scale_kind": kind, "limit": limit,
                "input_amax": amax, "ratio": amax / limit if limit > 0 else math.inf, "share_over": over,
                "order": order[name],
            })
    return rows


def kv_rows(ref_caps: Any, cand_runner: Any) -> list[dict[str, Any]]:
    """Per layer and k/v: amax of the reference's keys/values (as they enter the cache) vs 448·scale."""
    kvq = getattr(cand_runner, "kv_quant", None)
    if kvq is None or getattr(kvq, "source", "") != "checkpoint":
        return []
    rows = []
    for which, scales in (("k", kvq.k_scale), ("v", kvq.v_scale)):
        for i, s in sorted(scales.items()):
            x = ref_caps.tensors.get(f"layers.{i}.attn.{which}")
            if x is None:
                continue
            amax = float(x.abs().max())
            limit = FP8_MAX * s
            rows.append({
                "module": f"layers.{i}.attn.{which}", "layer": i, "op": f"attn.{which}",
                "scale_kind": f"kv {which}_scale", "limit": limit, "input_amax": amax,
                "ratio": amax / limit if limit > 0 else math.inf,
                "share_over": float((x.abs() > limit).float().mean()), "order": 0 if which == "k" else 1,
            })
    return rows


def findings_from_rows(rows: list[dict[str, Any]], kind: str) -> list[Finding]:
    bad = [r for r in rows if r["ratio"] > WARN_RATIO]
    if not bad:
        return []
    # the first in execution order among the worst class: the first clipped input is the cause
    bad.sort(key=lambda r: (-(r["ratio"] > CRITICAL_RATIO), r["layer"], r.get("order", 0)))
    first = bad[0]
    critical = first["ratio"] > CRITICAL_RATIO
    nv = first["scale_kind"].startswith("nvfp4")
    what = "blocks" if nv else "values"
    consequence = (
        "block scales overflow E4M3: the producer clips them, a kernel that casts without saturating gives NaN"
        if nv else "values clip at the FP8 maximum"
    )
    title_what = "KV-cache scale" if kind == "kv_cache_scale" else "Static activation scale"
    return [
        Finding(
            severity="critical" if critical else "warning",
            kind=kind,
            title=f"{title_what} too small for the prompt: {first['module']} input amax {first['input_amax']:.4g} "
            f"is {first['ratio']:.3g}x what its {first['scale_kind']} can represent ({first['limit']:.4g})",
            point=first["module"],
            layer=first["layer"],
            op=first["op"],
            token_index=None,
            detail=f"{len(bad)} of {len(rows)} statically scaled inputs exceed their range; in {first['module']} "
            f"{100 * first['share_over']:.2f}% of {what} are beyond it ({consequence}). Others: "
            + ", ".join(f"{r['module']} {r['ratio']:.3g}x" for r in bad[1:6]),
            evidence={"cause": "act_scale_overflow" if kind == "act_scale_overflow" else "kv_cache_scale",
                      "worst": first, "n_over": len(bad)},
        )
    ]


def audit_activation_scales(report: Any, ref_caps: Any, cand_runner: Any, ref_runner: Any,
                            rows: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None = None
                            ) -> list[dict[str, Any]]:
    """Add static-activation-scale and KV-scale headroom findings to ``report``; return the headroom rows.

    ``rows``: (``headroom_rows``, ``kv_rows``) when they were measured already (``audit.measure``).
    """
    rows, kv = rows or (headroom_rows(ref_caps, cand_runner, ref_runner), kv_rows(ref_caps, cand_runner))
    for f in findings_from_rows(rows, "act_scale_overflow") + findings_from_rows(kv, "kv_cache_scale"):
        report.add_finding(f)
    return rows + kv


__all__ = ["audit_activation_scales", "findings_from_rows", "headroom_rows", "kv_rows", "static_limit"]
