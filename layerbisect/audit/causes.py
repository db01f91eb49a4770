"""From evidence to a cause category on the top ``culprit`` finding.

Design notes
- The localizer says *where* (layer, op); the audits say *why*. Evidence comes as small
  records ``Evidence(cause, layer, op, source, why)`` from: the weight audit (scale powers,
  layout checks, missing tensors), the static-scale audit (activation overflow, KV-cache
  scales), the loader's notes (norms filled with the identity) and the per-module local
  errors of activation patching (α far from 1 or non-finite output of one linear).
- ``choose`` is pure: evidence in the culprit's own layer wins; otherwise the earliest layer
  (a fault early in the network explains what comes after); model-wide evidence (layer None)
  comes last. A cause found in several layers is reported at its earliest one. Within a
  layer, the order of ``PRIORITY`` decides (a non-finite or overflowing
  input explains a large local error better than an α a few percent off).
- No evidence means ``quantization_noise``: the divergence is what the format costs.
- The category lands in ``finding.evidence["cause"]`` and in the title, and a fault category
  raises the culprit to ``critical`` so it heads the report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

CAUSES = (
    "compute_overflow",
    "act_scale_overflow",
    "kv_cache_scale",
    "kv_calibration",
    "shard_scale",
    "missing_norm",
    "norm_convention",
    "embed_scale",
    "softcap_missing",
    "missing_scale",
    "attention_geometry",
    "nibble_order",
    "layout_permutation",
    "transposed",
    "scale_inverted",
    "double_scale",
    "global_scale_ignored",
    "scale_ignored",
    "shard_scale_mismatch",
    "scale_rounding",
    "exponent_offset",
    "nonfinite",
    "scale_mismatch",
    "corrupt_blocks",
    "quant_error_outlier",
    "garbage",
    "missing_tensor",
    "shape_mismatch",
    "beyond_noise",
    "quantization_noise",
)
PRIORITY = {c: i for i, c in enumerate(CAUSES)}
DESCRIPTION = {
    "act_scale_overflow": "a static activation scale too small for the activations "
    "(clipping; NaN in non-saturating kernels)",
    "kv_cache_scale": "FP8 KV-cache scales far too small for the keys/values (saturation in the cache)",
    "kv_calibration": "FP8 KV-cache scales frozen from a calibration pass whose activations were not the prompt's "
    "(a dummy input, or recurrent layers running from garbage state)",
    "shard_scale": "one per-tensor scale of a fused projection applied to its first shard only (the other shards' "
    "rows dequantized with another scale)",
    "missing_norm": "a norm tensor absent from the checkpoint, run as the identity",
    "missing_scale": "a scale tensor (layer scalar, router scale, per-expert scale) absent from the checkpoint, "
    "run as 1.0",
    "attention_geometry": "attention wrong only from the first layer of another head geometry (head_dim, kv "
    "heads): buffers, strides or leading dimensions sized for the other layers' geometry",
    "nibble_order": "FP4 nibble order swapped in weight_packed",
    "layout_permutation": "rows or columns of a weight in another order (the audit describes the permutation)",
    "transposed": "a weight stored transposed",
    "scale_inverted": "a scale used as multiplier instead of divisor (or stored as its reciprocal)",
    "double_scale": "a scale applied twice",
    "global_scale_ignored": "an NVFP4 global scale ignored",
    "scale_ignored": "a weight scale ignored",
    "nonfinite": "non-finite values in a dequantized tensor or a module's output",
    "scale_mismatch": "a weight scaled by a factor no stored scale explains",
    "compute_overflow": "an FP16/BF16 value past the compute dtype's range (the first Inf)",
    "norm_convention": "norm gains off by the (1 + w) convention (applied twice, not at all, or folded as 1 + w/s)",
    "embed_scale": "the embedding's √d scale missing or applied twice",
    "softcap_missing": "a softcap not applied (values beyond the cap)",
    "shard_scale_mismatch": "one projection of a fused group dequantized with a sibling's scale",
    "scale_rounding": "block scales rounded to powers of two without requantizing the weights",
    "exponent_offset": "MX (E8M0) scale exponents off by a power of two (an offset applied twice)",
    "beyond_noise": "an error beyond the format's noise that no audit explains (kernel, graph or engine)",
    "corrupt_blocks": "quant blocks of a GGUF tensor far off their tensor's quantization noise "
    "(scale bits or packed values changed)",
    "quant_error_outlier": "a GGUF tensor whose error is far beyond what its GGML type gives elsewhere in the file",
    "garbage": "a weight that matches the reference under no layout",
    "missing_tensor": "a tensor absent from the checkpoint",
    "shape_mismatch": "a tensor with the wrong shape",
    "quantization_noise": "no fault found: the divergence is the format's own quantization error",
}
ALPHA_TOL = 0.10


DECISIVE_SOURCES = ("weight_audit", "act_scale_overflow", "kv_cache_scale", "kv_calibration", "load_notes",
                    "nonfinite_onset", "softcap_missing")


@dataclass(frozen=True)
class Evidence:
    cause: str
    layer: int | None
    op: str | None
    source: str  # weight_audit / act_scale_overflow / kv_cache_scale / load_notes / nonfinite_onset / patching
    why: str

    @property
    def decisive(self) -> bool:
        """A critical audit, scale or non-finite finding: it names the fault by itself (see ``annotate_culprit``)."""
        return self.source in DECISIVE_SOURCES


def op_point(layer: int | None, op: str | None, order: Mapping[str, int]) -> str | None:
    """The capture point where a tensor's (``layer``, ``op``) effect first shows, for execution order.

    Module ops name their output point without ``_proj`` (``attn.q_proj`` → ``layers.3.attn.q``); the sandwich
    norms are ``attn.post_norm``/``mlp.post_norm``; QK-norm gains act inside ``attn.q``/``attn.k``; model-level
    tensors are ``embed``, ``final_norm`` and the logits.
    """
    if op is None:
        return f"layers.{layer}.out" if layer is not None and f"layers.{layer}.out" in order else None
    if layer is None:
        tries = {"embed": ["embed"], "final_norm": ["final_norm"], "lm_head": ["logits.pre_softcap", "logits"],
                 "logits": ["logits.pre_softcap", "logits"]}.get(op, [op])
        return next((t for t in tries if t in order), None)
    names = [op, op.removesuffix("_proj"), op.replace("post_attn_norm", "attn.post_norm"),
             op.replace("post_mlp_norm", "mlp.post_norm"), op.replace("q_norm", "q").replace("k_norm", "k")]
    for n in names:
        if f"layers.{layer}.{n}" in order:
            return f"layers.{layer}.{n}"
    first = [p for p in order if p.startswith(f"layers.{layer}.")]
    return min(first, key=lambda p: order[p]) if first else None


def execution_key(e: Evidence, order: Mapping[str, int], n_layers: int) -> tuple[float, float]:
    """(layer position, op order) of a piece of evidence; unknown ops sort first in their layer."""
    p = op_point(e.layer, e.op, order)
    if e.layer is not None:
        pos = float(e.layer)
    elif e.op == "embed":
        pos = -1.0
    else:
        pos = float(n_layers)  # final norm, lm_head, logits: after every layer
    return pos, float(order.get(p, -1)) if p else -1.0


def choose_decisive(evidence: Sequence[Evidence], order: Mapping[str, int], n_layers: int) -> Evidence | None:
    """The first decisive evidence in execution order (a fault upstream explains what follows); ties by PRIORITY."""
    dec = [e for e in evidence if e.decisive]
    if not dec:
        return None
    return min(dec, key=lambda e: (*execution_key(e, order, n_layers), PRIORITY.get(e.cause, len(PRIORITY))))


def choose(evidence: Sequence[Evidence], culprit_layer: int | None) -> Evidence | None:
    """The evidence that best explains a culprit at ``culprit_layer`` (pure)."""
    if not evidence:
        return None

    def key(e: Evidence) -> tuple[int, float, int]:
        here = 0 if (culprit_layer is not None and e.layer == culprit_layer) else 1
        layer = e.layer if e.layer is not None else math.inf
        return here, layer, PRIORITY.get(e.cause, len(PRIORITY))

    best = min(evidence, key=key)
    # the same fault in many layers (a norm dropped everywhere) starts at its earliest layer
    same = [e for e in evidence if e.cause == best.cause and e.layer is not None]
    return min(same, key=lambda e: (e.layer, PRIORITY.get(e.cause, 0))) if same else best


def from_weight_audit(audit: Any) -> list[Evidence]:
    out = []
    for cause, rows in audit.by_cause().items():
        if cause == "extra_tensor":
            continue
        for r in rows:
            out.append(Evidence(cause, r.layer, r.op, "weight_audit", f"{r.name}: {r.note}"))
    return out


def from_findings(findings: Iterable[Any]) -> list[Evidence]:
    """Critical findings that name a fault by themselves: static-scale overflow, KV scales, NaN/Inf, softcap."""
    out = []
    for f in findings:
        cause = (f.evidence or {}).get("cause")
        if f.kind in ("act_scale_overflow", "kv_cache_scale", "kv_calibration") and f.severity == "critical" \
                and cause:
            out.append(Evidence(cause, f.layer, f.op, f.kind, f.title))
        elif f.kind == "nonfinite_onset" and f.severity == "critical":
            ev = f.evidence or {}
            out.append(Evidence(ev.get("cause", "nonfinite"), f.layer, f.op or (f.point or None), "nonfinite_onset",
                                f.title + (f" ({ev['why']})" if ev.get("why") else "")))
        elif f.kind == "softcap_missing" and f.severity == "critical":
            out.append(Evidence("softcap_missing", f.layer, f.op, "softcap_missing", f.title))
    return out


def from_load_notes(notes: dict[str, Any] | None) -> list[Evidence]:
    """Tensors the candidate loader filled with the identity: norms (op = the norm module) and scale
    parameters (op = the parameter, e.g. ``layer_scalar``, ``mlp.router_scale``)."""
    out = []
    kinds = (notes or {}).get("missing_kinds") or {}
    for m in (notes or {}).get("missing", []):
        scale = kinds.get(m) == "scale"
        cause = "missing_scale" if scale else "missing_norm"
        parts = m.split(".")
        if parts[0] == "layers":
            op = ".".join(parts[2:] if scale else parts[2:-1])
            out.append(Evidence(cause, int(parts[1]), op, "load_notes",
                                f"{m} is not in the checkpoint; the loader used {'1.0' if scale else 'the identity'}"))
        else:
            out.append(Evidence(cause, None, parts[0], "load_notes", f"{m} missing"))
    return out


def from_modules(modules: Iterable[dict[str, Any]], clipped: Mapping[str, float] | None = None) -> list[Evidence]:
    """Per-module patching rows: non-finite output, or α far from 1 at high cosine.

    A module whose input exceeds its static activation scale (``clipped``: module → amax/limit)
    has a smaller output for that reason: its α is the clipping's, not a weight scale's.
    """
    out = []
    clipped = clipped or {}
    for m in modules:
        if m.get("nonfinite"):
            out.append(Evidence("nonfinite", m["layer"], m["op"], "patching",
                                f"{m['module']} gives {m['nonfinite']} non-finite outputs on the reference's input"))
        a, c = m.get("alpha", float("nan")), m.get("cosine", float("nan"))
        if a == a and c == c and c > 0.9 and abs(a - 1) > ALPHA_TOL and m["module"] not in clipped:
            out.append(Evidence("scale_mismatch", m["layer"], m["op"], "patching",
                                f"{m['module']} output ≈ {a:.4g}× the reference's at cosine {c:.4f}"))
    return out


OP_SCALE = 2.0  # an op output ≥ 2× (or ≤ ½×) the reference's at high cosine is a scale, not noise
OP_COS = 0.99


def from_ops(ops: Iterable[Any]) -> list[Evidence]:
    """Activation patching per op: the first op of a layer whose output is α·ref with α far from 1 at high cosine.

    With the layer run on the reference's own input, an op that scales its output by a factor
    while keeping its direction (post-norm gains scaled, a norm output handed on without its
    quantization scale) is a scale applied on top of one the model already accounts for:
    ``double_scale``. Only the first such op per layer counts: what follows inherits it.
    """
    out: list[Evidence] = []
    done: set[int] = set()
    for o in ops:  # comparison.record.OpLocal rows, execution order
        a, c = o.alpha, o.cosine
        if o.layer in done or not (a == a and c == c and a > 0 and c > OP_COS):
            continue
        if abs(math.log(a)) > math.log(OP_SCALE):
            done.add(o.layer)
            out.append(Evidence("double_scale", int(o.layer), o.op, "patching",
                                f"{o.op} output ≈ {a:.4g}× the reference's at cosine {c:.4f} with the layer "
                                "on the reference's input: a scale applied on top of one the model already "
                                "accounts for"))
    return out


def from_geometry(findings: Iterable[Any], spec: Any) -> list[Evidence]:
    """The first divergence lies in the attention of the first layer with a head geometry no earlier layer has.

    Everything before it matched, so the layers of the other geometry ran right: what differs
    is how this geometry was laid out (seed 004: workspace and KV cache sized from the sliding
    layers' head_dim, global layers' rows overflowing into the next token's). Needs no candidate
    weights: it works on engine dumps, where nothing can be patched.
    """
    fd = next((f for f in findings if f.kind == "first_divergence"), None)
    if fd is None or fd.layer is None or not str(fd.op or "").startswith("attn"):
        return []

    def geo(i: int) -> tuple[Any, ...]:
        m = spec.layers[i].mixer
        return (getattr(m, "head_dim", None), getattr(m, "n_heads", None), getattr(m, "n_kv_heads", None))

    here, before = geo(fd.layer), [geo(j) for j in range(fd.layer)]
    if not before or here in before:
        return []
    other = max(set(before), key=before.count)
    why = (f"{fd.point} is the first divergence, in the first layer with head_dim {here[0]} ({here[2]} kv heads); "
           f"the {len(before)} layers before it (head_dim {other[0]}, {other[2]} kv heads) match")
    return [Evidence("attention_geometry", fd.layer, fd.op, "first_divergence", why)]


def annotate_dump(report: Any, spec: Any) -> str | None:
    """Name a cause on a comparison against an engine dump (no candidate to patch); None without evidence."""
    ev = from_geometry(report.findings, spec)
    return annotate_culprit(report, ev) if ev else None
def absorbed_note(report: Any, layer: int | None, op: str | None) -> str:
    """A sentence saying whether the residual stream after the fault's layer stays within the format's noise."""
    cmp = report.comparison
    res = f"layers.{layer}.out" if layer is not None else ("layers.0.out" if op == "embed" else None)
    if res is None or res not in cmp.points:
        return ""
    noise = getattr(report.record, "noise", None)
    p = noise.point(res) if noise is not None else None
    if p is not None:
        if not p.beyond:
            return (f"The residual stream absorbs its effect: {res} stays within the format's noise (rel err "
                    f"{p.cand_rel_l2:.3g} vs expected {p.expected_rel_l2:.3g}).")
        return f"Its effect reaches the residual stream: {res} rel err {p.cand_rel_l2:.3g} vs expected " \
               f"{p.expected_rel_l2:.3g}."
    r = cmp.points[res]
    t = cmp.thresholds.min_cosine
    if t is not None and r.full and r.min_cosine >= t:
        return f"The residual stream absorbs its effect: {res} keeps cosine {r.min_cosine:.4f}."
    return ""


def annotate_culprit(report: Any, evidence: Sequence[Evidence]) -> str:
    """Evidence first: make the top ``culprit`` finding name the fault; returns its cause category.

    A decisive piece of evidence (a critical audit, scale, non-finite or softcap finding) decides the culprit's
    layer and op: the first such in execution order. Otherwise the localizer's culprit stands (the layer beyond
    the format's noise and its first op beyond it) and the evidence at that layer names the cause; a culprit
    beyond noise that no audit explains is ``beyond_noise``; none at all is ``quantization_noise``.
    """
    culprits = [f for f in report.findings if f.kind == "culprit" and (f.evidence or {}).get("source") != "bisect"]
    top = culprits[0] if culprits else None
    cmp = report.comparison
    if top is None and any(f.kind == "identical" for f in report.findings) and not any(e.decisive for e in evidence):
        return "identical"  # nothing differs: no culprit to name (the audits' own findings stand)
    n_layers = cmp.info.n_layers if getattr(cmp, "info", None) is not None else 0
    decisive = choose_decisive(evidence, cmp.order, n_layers)
    if top is None:
        from ..comparison.findings import Finding

        first = decisive or choose(evidence, None)
        top = Finding(severity="info", kind="culprit", title="Culprit", layer=first.layer if first else None,
                      op=first.op if first else None,
                      point=op_point(first.layer, first.op, cmp.order) if first is not None else None,
                      evidence={"source": "evidence"})
        report.add_finding(top)
    localized = (top.layer, top.op)
    loc_detail = top.detail
    if decisive is not None:
        best: Evidence | None = decisive
        top.layer, top.op = decisive.layer, decisive.op
        top.point = op_point(decisive.layer, decisive.op, cmp.order)
    else:
        best = choose([e for e in evidence if e.layer == top.layer or e.layer is None], top.layer)
    if best is not None:
        cause = best.cause
    elif top.severity == "critical" and (top.evidence or {}).get("noise_aware"):
        cause = "beyond_noise"
    else:
        cause = "quantization_noise"
    top.evidence["cause"] = cause
    top.evidence["cause_description"] = DESCRIPTION.get(cause, cause)
    where_txt = (f"layer {top.layer}, {top.op}" if top.layer is not None else str(top.op or "model")) if (
        top.op or top.layer is not None) else "layer output"
    if best is not None:
        top.evidence["cause_evidence"] = asdict(best)
        top.evidence["cause_layer"], top.evidence["cause_op"] = best.layer, best.op
        where = f"layer {best.layer}, {best.op}" if best.layer is not None else str(best.op)
        because = f"Cause: {DESCRIPTION.get(cause, cause)} — {best.why} (evidence at {where}, from the " \
                  f"{best.source.replace('_', ' ')})."
        parts = [because]
        if decisive is not None:
            parts.append(absorbed_note(report, best.layer, best.op))
            if localized[0] is not None and localized != (best.layer, best.op):
                parts.append(f"Localization alone pointed at layer {localized[0]}, {localized[1]}: {loc_detail}")
            elif loc_detail:
                parts.append(f"Localization: {loc_detail}")
        else:
            parts.insert(0, loc_detail)
        top.detail = " ".join(p for p in parts if p)
        if top.severity in ("info", "warning", "error"):
            top.severity = "critical"
        top.title = f"[{cause}] Culprit: {where_txt}" + ("" if decisive is not None else
                                                         _tail(top.title))
    else:
        if cause == "quantization_noise" and top.severity == "critical":
            # No fault evidence: the outlier layer is the format's own error, worth a look, not an alarm.
            top.severity = "warning"
        top.title = f"[{cause}] {top.title}"
    return cause


def _tail(title: str) -> str:
    """The localizer's qualifier, e.g. " (beyond the format's noise)"."""
    i = title.rfind(" (")
    return title[i:] if i >= 0 else ""


def collect(
    report: Any,
    cand_runner: Any = None,
    weight_audit: Any = None,
    localization: Any = None,
    clipped: Mapping[str, float] | None = None,
) -> list[Evidence]:
    """Evidence from every audit; ``clipped``: module → input amax / static-scale limit for inputs that clip."""
    ev: list[Evidence] = []
    if weight_audit is not None:
        ev += from_weight_audit(weight_audit)
    ev += from_findings(report.findings)
    if cand_runner is not None and weight_audit is None:
        ev += from_load_notes(getattr(cand_runner, "load_notes", None))
    if localization is not None:  # comparison.record.Localization
        ev += from_modules((asdict(m) for m in localization.modules), clipped)
        ev += from_ops(localization.ops)
    return ev


__all__ = ["CAUSES", "Evidence", "annotate_culprit", "annotate_dump", "choose", "choose_decisive", "collect",
           "from_geometry", "from_ops", "op_point"]
