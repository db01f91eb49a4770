"""The recurrent state of hybrid models, side by side: its norm per layer after the prompt and after each decode step.

A recurrent layer (``graph/deltanet.py``) records ``layers.{i}.attn.state``: the Frobenius norm
of each value head's state after every token, (T, Hv). In the teacher-forced pass, row
``n_prompt - 1`` is the state after the prompt and each later row the state after one decode
step, so this module needs no pass of its own. Per recurrent layer it reports the largest head
norm on both sides at those tokens and their ratio, and raises a ``recurrent_state`` finding
at the first (layer, token) where the candidate's state is non-finite or its norm leaves
[1/``STATE_RATIO``, ``STATE_RATIO``]× the reference's: a state that starts as garbage shows at
token 0, one that blows up at the token where it takes off. Where the layer's own input
(``attn_norm``) already diverged at that token, the state only carries upstream error: the
finding is then a warning naming that, and a state off behind a matching input wins.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from .findings import Finding

STATE_RATIO = 2.0  # a state norm off by 2x is no quantization noise (FP8/NVFP4 move it by a few percent)
INPUT_OK = 0.99  # the layer's input (attn_norm) still matches at that token: the state is the suspect
_STATE = re.compile(r"^layers\.(\d+)\.attn\.state$")


def state_rows(ref: Any, cand: Any, n_prompt: int) -> list[dict[str, Any]]:
    """One row per recurrent layer: max head norm on both sides after the prompt and after each decode step."""
    rows = []
    for name in ref.names():
        m = _STATE.match(name)
        if m is None or name not in cand.tensors:
            continue
        r = ref[name].float().amax(-1)  # (T,): the largest head's state norm after each token
        c = cand[name].float()
        c = torch.where(torch.isfinite(c), c, torch.full_like(c, math.inf)).amax(-1)
        ratio = c / r.clamp_min(1e-30)
        off = (~torch.isfinite(ratio)) | (ratio > STATE_RATIO) | (ratio < 1.0 / STATE_RATIO)
        first = int(off.nonzero()[0]) if bool(off.any()) else None
        p = min(n_prompt, r.shape[0]) - 1
        inp = f"layers.{m.group(1)}.attn_norm"  # the mixer's input: divergent already, or fine?
        input_cos = None
        if first is not None and inp in ref.tensors and inp in cand.tensors:
            a, b = ref[inp][first].double(), cand[inp][first].double()
            input_cos = float(torch.nan_to_num(torch.nn.functional.cosine_similarity(a, b, dim=0), nan=-1.0))
        rows.append({
            "layer": int(m.group(1)), "point": name,
            "ref_after_prompt": float(r[p]), "cand_after_prompt": float(c[p]), "ratio_after_prompt": float(ratio[p]),
            "ref_decode": " ".join(f"{float(x):.4g}" for x in r[p + 1:]),  # after each decode step
            "cand_decode": " ".join(f"{float(x):.4g}" for x in c[p + 1:]),
            "max_ratio": float(ratio.max()), "first_off_token": first, "input_cosine_there": input_cos,
        })
    return rows


def state_findings(rows: list[dict[str, Any]]) -> list[Finding]:
    off = [r for r in rows if r["first_off_token"] is not None]
    if not off:
        return []
    # a state is its own suspect when its layer's input still matched there; else it follows upstream error
    own = [r for r in off if r["input_cosine_there"] is None or r["input_cosine_there"] >= INPUT_OK]
    first = min(own or off, key=lambda r: (r["first_off_token"], r["layer"]))
    t = first["first_off_token"]
    what = "starts off" if t == 0 else f"departs at token {t}"
    why = ("" if own else f" behind an input that already diverged (mixer input cosine "
                          f"{first['input_cosine_there']:.3f} there)")
    return [Finding(
        severity="critical" if own else "warning", kind="recurrent_state",
        title=f"Recurrent state of layer {first['layer']} {what}{why}: candidate/reference state norm up to "
              f"{first['max_ratio']:.3g}x",
        point=first["point"], layer=first["layer"], op="attn.state", token_index=t,
        detail=f"{len(off)} of {len(rows)} recurrent layers leave [1/{STATE_RATIO:g}, {STATE_RATIO:g}]x the "
               f"reference's state norm (" + ", ".join(f"layer {r['layer']} from token {r['first_off_token']}"
                                                      for r in off[:6])
               + "). A state off at token 0 while its input matches started as garbage; one that grows token by "
               "token blows up; one behind a divergent input carries upstream error.",
        evidence={"layers": [r["layer"] for r in off], "first": first},
    )]


def add_state_section(report: Any, ref: Any, cand: Any, n_prompt: int) -> list[Finding]:
    """Add the "Recurrent state" section (and finding) to ``report`` when the model has recurrent layers."""
    rows = state_rows(ref, cand, n_prompt)
    if not rows:
        return []
    out = state_findings(rows)
    for f in out:
        report.add_finding(f)
    report.add_section(
        "Recurrent state (largest head's ‖S‖ after the prompt and after each decode step)",
        rows,
        f"ratio = candidate / reference; flagged when non-finite or outside [1/{STATE_RATIO:g}, {STATE_RATIO:g}].",
    )
    return out


__all__ = ["INPUT_OK", "STATE_RATIO", "add_state_section", "state_findings", "state_rows"]
