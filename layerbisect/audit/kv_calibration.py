"""Calibrated FP8 KV-cache scales against what the real prompt needs; the recurrent state the calibration ran through.

Design notes
- The candidate froze its k/v scales on a calibration pass (``kv_calibration.py``). The scale
  the real prompt needs is ``amax/448`` of the keys/values the *reference* writes to its cache
  on the prompt (``layers.{i}.attn.k/v``, FP32, no KV quantization). Their ratio is the headroom
  used, as in the static-scale audit: ``h = amax_prompt / (448·scale)``. ``h > 1`` clips in the
  cache; E4M3 is a float format, so a scale too *large* costs precision only once values fall
  into its subnormals (below 2⁻⁶·scale): harmless up to ~256× (values under ~1 % of amax).
  Far off: ``h > FAR_SMALL`` (2: half the prompt's range clips) or ``h < 1/FAR_LARGE`` (256),
  or a scale that is zero or not finite.
- Recurrent layers: the pass records the norm of the state each started from (0 for a clean
  start) and the largest state norm it reached; the reference's ``attn.state`` capture gives
  the same on the prompt. A state that started non-zero, went non-finite, or reached more than
  ``STATE_FAR``× (or under 1/``STATE_FAR``) the prompt's is garbage.
- The finding names the first attention layer (execution order) whose scale is far off, and
  the nearest recurrent layer upstream of it whose state was garbage during calibration (all of
  them in the evidence); its cause ``kv_calibration`` feeds the culprit (``causes.py``).
"""

from __future__ import annotations

import math
from typing import Any

from ..comparison.findings import Finding

FP8_MAX = 448.0
FAR_SMALL = 2.0
FAR_LARGE = 256.0
STATE_FAR = 10.0


def _far(h: float) -> bool:
    return not math.isfinite(h) or h > FAR_SMALL or h < 1.0 / FAR_LARGE


def calibration_rows(calib: Any, ref_caps: Any) -> list[dict[str, Any]]:
    """One row per layer: attention k/v headroom on the prompt, recurrent state during calibration vs the prompt."""
    rows = []
    for c in calib.layers:
        i = c.layer
        if c.kind == "attention":
            for which, scale in (("k", c.k_scale), ("v", c.v_scale)):
                x = ref_caps.tensors.get(f"layers.{i}.attn.{which}")
                if x is None or scale is None:
                    continue
                amax = float(x.abs().max())
                h = amax / (FP8_MAX * scale) if scale and math.isfinite(scale) and scale > 1e-12 else math.inf
                rows.append({"layer": i, "kind": "attention", "point": f"layers.{i}.attn.{which}",
                             "frozen_scale": scale, "calibration_amax": scale * FP8_MAX, "prompt_amax": amax,
                             "headroom": h, "far_off": _far(h)})
        else:
            st = ref_caps.tensors.get(f"layers.{i}.attn.state")
            prompt_max = float(st.max()) if st is not None and st.numel() else math.nan
            smax = c.state_max if c.state_max is not None else math.nan
            ratio = smax / prompt_max if prompt_max and prompt_max > 0 else math.inf
            garbage = bool((c.state_initial or 0.0) > 0.0 or c.nonfinite or not math.isfinite(smax)
                           or ratio > STATE_FAR or ratio < 1.0 / STATE_FAR)
            rows.append({"layer": i, "kind": "recurrent", "point": f"layers.{i}.attn.state",
                         "state_initial": c.state_initial, "calibration_state_max": smax,
                         "prompt_state_max": prompt_max, "state_ratio": ratio, "garbage": garbage})
    return rows


def calibration_findings(calib: Any, rows: list[dict[str, Any]]) -> list[Finding]:
    far = [r for r in rows if r["kind"] == "attention" and r["far_off"]]
    garbage = [r for r in rows if r["kind"] == "recurrent" and r["garbage"]]
    if not far:
        return []
    first = far[0]  # rows are in layer order, k before v: the first far-off scale in execution order
    i = first["layer"]
    upstream = [r for r in garbage if r["layer"] < i]
    src = upstream[-1] if upstream else None
    h = first["headroom"]
    what = (f"{first['point'].rsplit('.', 1)[-1]}_scale {first['frozen_scale']:.4g} covers "
            + (f"1/{h:.3g} of the prompt's range" if math.isfinite(h) and h > 1 else
               f"{1 / h:.3g}x the prompt's range" if math.isfinite(h) and h > 0 else "nothing (not finite)"))
    title = f"KV-cache scales calibrated on '{calib.mode}' are far off from layer {i}: {what}"
    detail = (f"Calibration pass: {calib.n_tokens} tokens ({calib.mode}), scales frozen at amax/448. On the prompt, "
              f"{first['point']} reaches {first['prompt_amax']:.4g} where the frozen scale represents "
              f"{FP8_MAX * first['frozen_scale']:.4g}; {len(far)} of "
              f"{sum(r['kind'] == 'attention' for r in rows)} attention k/v scales are far off ("
              + ", ".join(f"{r['point']} {r['headroom']:.3g}x" for r in far[:6]) + ").")
    if src is not None:
        title += (f"; recurrent layer {src['layer']} upstream ran from garbage state during calibration "
                  f"(state norm {src['calibration_state_max']:.3g} vs {src['prompt_state_max']:.3g} on the prompt)")
        detail += (" Recurrent layers whose state was garbage during calibration: "
                   + ", ".join(f"{r['layer']} (start {r['state_initial']:.3g}, max {r['calibration_state_max']:.3g}"
                               f" vs {r['prompt_state_max']:.3g})" for r in garbage)
                   + ". Their outputs fed every attention layer downstream of them.")
    elif calib.mode in ("zeros", "random"):
        detail += f" The calibration input ({calib.mode}) is not the prompt: its activations set the scales."
    return [Finding(
        severity="critical", kind="kv_calibration", title=title, point=first["point"], layer=i,
        op=first["point"].split(".", 2)[2], token_index=None, detail=detail,
        evidence={"cause": "kv_calibration", "mode": calib.mode, "first": first,
                  "recurrent_layer": src["layer"] if src else None,
                  "garbage_layers": [r["layer"] for r in garbage], "far_off": [r["point"] for r in far]},
    )]


def audit_kv_calibration(report: Any, calib: Any, ref_caps: Any) -> list[Finding]:
    """Add the "KV-cache calibration" section and, when a scale is far off, a ``kv_calibration`` finding."""
    rows = calibration_rows(calib, ref_caps)
    out = calibration_findings(calib, rows)
    for f in out:
        report.add_finding(f)
    if rows:
        report.add_section(
            f"KV-cache calibration ({calib.mode}: scales frozen on a first pass of {calib.n_tokens} tokens)",
            rows,
            "attention: headroom = prompt amax / (448·frozen scale); > 1 clips in the FP8 cache, far off beyond "
            f"{FAR_SMALL:g}x or under 1/{FAR_LARGE:g}. recurrent: the state norm the calibration pass started "
            "from and reached vs the reference's on the prompt; garbage = a non-zero start, non-finite or "
            f"beyond {STATE_FAR:g}x.",
        )
    return out


__all__ = ["FAR_LARGE", "FAR_SMALL", "STATE_FAR", "audit_kv_calibration", "calibration_findings",
           "calibration_rows"]
