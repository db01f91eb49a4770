"""Weight and scale audit: every candidate tensor, dequantized, against the reference's; no forward pass.

Design notes
- Both sides go through the loaders the comparison uses, so the audit sees exactly what the
  runs see: the reference runner dequantizes the GGUF to FP32 under canonical names; the
  candidate runner dequantizes each linear (``QuantLinear.dequantized_weight()``) and undoes
  HF conventions (Gemma's ``1 + w`` norms, llama's Q/K rope permutation). A tensor pair is
  then three numbers: cosine, relative L2 error and the best-fit scale α with cand ≈ α·ref.
- α is what tells scale bugs apart. With the stored scale s (FP8 ``weight_scale``, a
  multiplier) or g (NVFP4 ``weight_global_scale``, a divisor), the exponent k = log α / log s
  is close to a small integer when a convention went wrong:
      |k| ≈ 2: the scale was inverted (multiplier used as divisor, or the stored value is the
               reciprocal): ``scale_inverted``;
      FP8  k ≈ +1 (applied twice) ``double_scale``; k ≈ -1 (ignored) ``scale_ignored``;
      NVFP4 k ≈ +1 (global ignored / block scales not divided) ``global_scale_ignored``;
            k ≈ -1 (divided twice) ``double_scale``.
  A uniform α ≠ 1 on dense tensors (norm gains) with no scale to explain it is reported as
  ``double_scale`` when it repeats across tensors (a factor applied again), else ``scale_mismatch``.
- Low cosine is a layout question: the audit tries the candidate transposed, Q/K rows
  permuted for rope either way (``families.base.permute_qk``), FP4 nibbles swapped; the first that
  restores the cosine names the cause (``transposed``, ``layout_permutation``, ``nibble_order``).
- Inventory: tensors on one side only. The reference loader refuses unmapped GGUF tensors;
  the candidate loader fills missing norms with the identity and lists them (``load_notes``),
  and lists checkpoint tensors the graph never uses. Both are silent in every engine log.
- Pure helpers (``best_alpha``, ``classify_scale``) are separate from the I/O (``audit_runners``;
  ``api.audit_weights`` opens the files).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..comparison.findings import Finding

COS_OK = 0.95  # quantization noise stays far above (NVFP4 ≈ 0.99, FP8 ≈ 0.9995); a layout bug falls far below
ALPHA_TOL = 0.10  # |α - 1| beyond this is a scale bug; noise keeps α within ~1%
K_TOL = 0.15  # how close log α / log s must be to an integer to name the convention
RESTORED_COS = 0.9  # a layout hypothesis that lifts the cosine above this explains the fault


@dataclass
class TensorAudit:
    name: str  # canonical: layers.3.attn.q_proj.weight
    kind: str  # linear / norm / embedding / lm_head
    layer: int | None
    op: str | None
    scheme: str
    shape: tuple[int, ...]
    cosine: float = float("nan")
    rel_err: float = float("nan")
    alpha: float = float("nan")
    nonfinite: int = 0
    status: str = "ok"  # ok / fault / missing / extra
    cause: str = ""
    note: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = "x".join(str(s) for s in self.shape)
        d.pop("evidence")
        return d


# ---------------------------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------------------------


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().flatten(), b.double().flatten()
    na, nb = float(a64.norm()), float(b64.norm())
    if na == 0 or nb == 0 or not (math.isfinite(na) and math.isfinite(nb)):
        return float("nan") if not (math.isfinite(na) and math.isfinite(nb)) else float(na == nb)
    return float(a64 @ b64) / (na * nb)


def rel_err(ref: torch.Tensor, cand: torch.Tensor) -> float:
    r = ref.double().flatten()
    n = float(r.norm())
    d = float((cand.double().flatten() - r).norm())
    return d / n if n > 0 else (0.0 if d == 0 else float("inf"))


def best_alpha(ref: torch.Tensor, cand: torch.Tensor) -> float:
    """Least-squares α with cand ≈ α·ref."""
    r, c = ref.double().flatten(), cand.double().flatten()
    rr = float(r @ r)
    return float(r @ c) / rr if rr > 0 else float("nan")


def classify_scale(alpha: float, scale: float | None, convention: str) -> tuple[str, float | None]:
    """(cause, k) for α given the module's stored scale; convention 'multiply' (FP8) or 'divide' (NVFP4 global).

    Returns ("", None) when α is within tolerance, ("scale_mismatch", k) when no convention explains it.
    """
    if not math.isfinite(alpha) or alpha <= 0:
        return ("scale_mismatch", None) if alpha == alpha else ("nonfinite", None)
    if abs(alpha - 1.0) <= ALPHA_TOL:
        return "", None
    if scale is None or scale <= 0 or abs(math.log(scale)) < math.log(4.0):
        return "scale_mismatch", None  # a scale near 1 cannot explain anything by its powers
    k = math.log(alpha) / math.log(scale)
    kr = round(k)
    if abs(k - kr) > K_TOL * max(1, abs(kr)) or kr == 0:
        return "scale_mismatch", k
    if abs(kr) == 2:
        return "scale_inverted", k
    if convention == "multiply":
        return ("double_scale" if kr == 1 else "scale_ignored"), k
    return ("global_scale_ignored" if kr == 1 else "double_scale"), k


def swap_nibbles(packed: torch.Tensor) -> torch.Tensor:
    return (packed >> 4) | ((packed & 0x0F) << 4)


# ---------------------------------------------------------------------------------------------------------------
# the audit
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class WeightAudit:
    ref_path: str
    cand_path: str
    rows: list[TensorAudit]

    @property
    def faults(self) -> list[TensorAudit]:
        return [r for r in self.rows if r.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.faults

    def by_cause(self) -> dict[str, list[TensorAudit]]:
        out: dict[str, list[TensorAudit]] = {}
        for r in self.faults:
            out.setdefault(r.cause or r.status, []).append(r)
        return out

    def findings(self) -> list[Finding]:
        out = []
        for cause, rows in self.by_cause().items():
            first = rows[0]
            names = [r.name for r in rows]
            severity = "error" if cause in ("extra_tensor",) else "critical"
            alpha = f", α {first.alpha:.4g}" if math.isfinite(first.alpha) else ""
            out.append(
                Finding(
                    severity=severity,  # type: ignore[arg-type]
                    kind="weight_audit",
                    title=f"Weight audit [{cause}]: {len(rows)} tensor(s), first {first.name}"
                    + (f" (cosine {first.cosine:.4f}{alpha})" if math.isfinite(first.cosine) else ""),
                    point=first.name.rsplit(".", 1)[0] if first.layer is not None else None,
                    layer=first.layer,
                    op=first.op,
                    token_index=None,
                    detail=f"{first.note} Tensors: {', '.join(names[:8])}" + (" ..." if len(names) > 8 else ""),
                    evidence={"cause": cause, "tensors": names, "first": first.row(), **first.evidence},
                )
            )
        return out

    def summary_text(self, limit: int = 12) -> str:
        if self.ok:
            return f"weight audit: no fault in {len(self.rows)} tensors"
        lines = [f"weight audit: {len(self.faults)} fault(s) in {len(self.rows)} tensors"]
        for r in self.faults[:limit]:
            lines.append(
                f"  {r.status:<7} {r.cause:<22} {r.name:<34} cos {r.cosine:.4f}  α {r.alpha:.4g}  {r.note}".rstrip()
            )
        if len(self.faults) > limit:
            lines.append(f"  ... {len(self.faults) - limit} more")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": self.ref_path,
            "cand": self.cand_path,
            "ok": self.ok,
            "n_tensors": len(self.rows),
            "faults": [r.row() | {"evidence": r.evidence} for r in self.faults],
            "rows": [r.row() for r in self.rows],
        }

    def add_to_report(self, report: Any) -> None:
        """The findings; the rows reach the run record as ``Audits.weights`` (``audit.after_localize``)."""
        for f in self.findings():
            report.add_finding(f)


def _kind_op(name: str, linears: Any = ()) -> tuple[str, int | None, str | None]:
    parts = name.split(".")
    if parts[0] == "layers":
        op = ".".join(parts[2:-1])
        return ("linear" if name.rsplit(".", 1)[0] in linears else "norm"), int(parts[1]), op
    if name.startswith("embed"):
        return "embedding", None, "embed"
    if name.startswith("lm_head"):
        return "lm_head", None, "lm_head"
    return "norm", None, parts[0]


# Whole-vocabulary tensors (embedding, head) are audited a block of rows at a time: they are the
# largest tensors of a model and neither side's FP32 copy needs to exist whole for three sums.
ROW_BLOCKED = ("embed.weight", "lm_head.weight")
BLOCK_BYTES = 256 << 20  # FP32 bytes of one block of rows (per side)
_CHUNK = 1 << 22  # elements per step of the sums: bounds the temporaries to a few 16 MB buffers
_ROW = 1024  # elements per float32 partial sum; the partial sums are added in float64


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x·y of two flat float32 tensors as a float64 scalar: float32 dots over runs of ``_ROW``, added in float64."""
    n = x.numel() - x.numel() % _ROW
    s = torch.bmm(x[:n].view(-1, 1, _ROW), y[:n].view(-1, _ROW, 1)).sum(dtype=torch.float64)
    return s + torch.dot(x[n:], y[n:]).double() if n < x.numel() else s


class PairSums:
    """Sums over a (reference, candidate) tensor pair fed block by block: r·r, c·c, r·c, |c−r|², non-finite.

    The candidate's non-finite values count, then enter the sums as 0 (as ``nan_to_num``); the
    reference's enter as they are. Each block of the candidate moves to the reference's device
    (the sides may sit on two GPUs); the sums stay on that device until ``result``, so feeding
    blocks never waits for the device. Precision: float32 dot products over runs of ``_ROW``
    elements (relative error ~1e-7), added in float64, and |c−r|² from the difference itself
    (no cancellation): within 1e-6 of the float64 ``cos_sim``/``rel_err``/``best_alpha`` (tested),
    at a fraction of their memory traffic.
    """

    def __init__(self) -> None:
        self.sums: torch.Tensor | None = None
        self.shape_ok = True

    @torch.no_grad()  # parameters may require grad: no graph (and no saved temporaries) behind the sums
    def add(self, r: torch.Tensor, c: torch.Tensor) -> None:
        if tuple(r.shape) != tuple(c.shape):
            self.shape_ok = False
            return
        r, c = r.reshape(-1), c.reshape(-1)
        if self.sums is None:
            self.sums = torch.zeros(5, dtype=torch.float64, device=r.device)
        for lo in range(0, r.numel(), _CHUNK):
            rr = r[lo : lo + _CHUNK].float()
            cc = c[lo : lo + _CHUNK].to(r.device, torch.float32)
            s_cc = _dot(cc, cc)
            bad = torch.zeros((), dtype=torch.float64, device=r.device)
            if not bool(torch.isfinite(s_cc)):  # rare: count the candidate's non-finite values, then zero them
                finite = torch.isfinite(cc)
                bad += finite.numel() - int(finite.sum())
                cc = torch.nan_to_num(cc, nan=0.0, posinf=0.0, neginf=0.0)
                s_cc = _dot(cc, cc)
            self.sums += torch.stack([_dot(rr, rr), s_cc, _dot(rr, cc), _dot(cc - rr, cc - rr), bad])

    def result(self) -> tuple[int, float, float, float]:
        """(non-finite count, cosine, relative L2 error, best-fit α) as ``cos_sim``/``rel_err``/``best_alpha``."""
        rr, cc, rc, dd, bad = self.sums.tolist() if self.sums is not None else (0.0,) * 5
        na, nb = math.sqrt(rr) if rr >= 0 else float("nan"), math.sqrt(cc)
        if na == 0 or nb == 0 or not (math.isfinite(na) and math.isfinite(nb)):
            cos = float("nan") if not (math.isfinite(na) and math.isfinite(nb)) else float(na == nb)
        else:
            cos = rc / (na * nb)
        d = math.sqrt(dd) if dd >= 0 else float("nan")
        rel = d / na if na > 0 else (0.0 if d == 0 else float("inf"))
        alpha = rc / rr if rr > 0 else float("nan")
        return int(bad), cos, rel, alpha


def _blocks_pair(rm: Any, cm: Any, name: str) -> tuple[Any, Any] | None:
    """Row blocks of a whole-vocabulary tensor on both sides, or None when one side is not row-sliceable
    (a quantized head: its module's dequantized weight is audited whole)."""
    from ..streaming import row_blocks

    cb = row_blocks(cm, name, BLOCK_BYTES)
    rb = row_blocks(rm, name, BLOCK_BYTES) if cb is not None else None
    return None if rb is None or cb is None else (rb, cb)


@torch.no_grad()
def audit_runners(ref_runner: Any, cand_runner: Any) -> WeightAudit:
    """Audit two activated runners (reference: GGUF → FP32; candidate: quantized HF checkpoint).

    Walks the reference's parameters in graph order, one layer of each side alive at a time
    when streamed; each pair is reduced to its sums block by block (``PairSums``) on the
    reference's device, so the audit holds at most one dequantized candidate tensor beyond
    the layers themselves, whatever the model's depth.
    """
    from ..candidates.qlinear import FP8Linear, NVFP4Linear
    from ..graph.inventory import meta_model, params

    rm, cm = ref_runner.model, cand_runner.model
    ref_sd = rm.state_dict()
    cfg = rm.cfg
    lins = cand_runner.quant_linears()
    missing = set(getattr(cand_runner, "load_notes", {}).get("missing", []))
    cand_sd = cm.state_dict()
    shapes = {p.name: p.shape for p in params(meta_model(cfg))}
    rows: list[TensorAudit] = []
    for name in ref_sd:
        if name == "lm_head.weight" and cfg.tied_embeddings:
            continue
        r = c = None  # the previous pair is freed before this one is read
        kind, layer, op = _kind_op(name, lins)
        module = name.rsplit(".", 1)[0]
        blocks = _blocks_pair(rm, cm, name) if name in ROW_BLOCKED else None
        # a row-blocked head is dense; anything else gets its module (a streamed layer is built once for all)
        lin = lins.get(module) if blocks is None and module in lins else None
        scheme = lin.scheme.weight if lin is not None else "dense"
        shape = tuple(shapes.get(name, ()))
        sums = PairSums()
        if blocks is not None:
            for rb, cb in zip(*blocks):
                sums.add(rb, cb)
        else:
            r = ref_sd[name]
            shape = tuple(r.shape)
            if lin is not None:
                c = getattr(lin, "bias", None) if name.endswith(".bias") else lin.dequantized_weight()
            elif name not in missing:
                c = cand_sd.get(name)
        row = TensorAudit(name, kind, layer, op, scheme, shape)
        rows.append(row)
        if name in missing or (blocks is None and c is None):
            row.status, row.cause = "missing", "missing_norm" if kind == "norm" else "missing_tensor"
            row.note = "absent from the candidate checkpoint; the loader ran it as the identity"
            continue
        if c is not None:
            c = c.float()
            if tuple(c.shape) != tuple(r.shape):
                row.status, row.cause = "fault", "shape_mismatch"
                row.note = f"candidate shape {tuple(c.shape)}"
                continue
            sums.add(r, c)
        elif not sums.shape_ok:
            row.status, row.cause, row.note = "fault", "shape_mismatch", "candidate rows differ in shape"
            continue
        row.nonfinite, row.cosine, row.rel_err, row.alpha = sums.result()
        if row.nonfinite:
            row.status, row.cause = "fault", "nonfinite"
            row.note = f"{row.nonfinite} non-finite values after dequantization"
            continue
        if row.cosine < COS_OK:
            row.status = "fault"
            if r is not None and c is not None:
                row.cause, row.note, restored = _layout(name, r, c.to(r.device), lin, cfg, NVFP4Linear)
            else:  # a whole-vocabulary tensor is never square: no layout hypothesis applies
                row.cause, row.note, restored = "garbage", "low cosine and no layout hypothesis restores it", -2.0
            row.evidence["restored_cosine"] = restored
            continue
        scale, conv = _stored_scale(lin, FP8Linear, NVFP4Linear)
        cause, k = classify_scale(row.alpha, scale, conv)
        if cause:
            row.status, row.cause = "fault", cause
            row.evidence.update({"stored_scale": scale, "convention": conv, "k": k})
            row.note = _scale_note(cause, row.alpha, scale, conv, k)
    _repeated_dense_scale(rows)
    for extra in getattr(cand_runner, "load_notes", {}).get("unused", []):
        rows.append(TensorAudit(extra, "extra", None, None, "", (), status="extra", cause="extra_tensor",
                                note="in the candidate checkpoint, used by no module of the graph"))
    return WeightAudit(str(ref_runner.path), str(cand_runner.path), rows)


def _stored_scale(lin: Any, fp8_cls: type, nv_cls: type) -> tuple[float | None, str]:
    if isinstance(lin, nv_cls):
        g = lin.w_global
        return float(g.as_divisor()), "divide"
    if isinstance(lin, fp8_cls) and lin.weight_scale.numel() == 1:
        return float(lin.weight_scale), "multiply"
    if isinstance(lin, fp8_cls):
        return float(lin.weight_scale.float().median()), "multiply"
    return None, "multiply"


def _scale_note(cause: str, alpha: float, scale: float | None, conv: str, k: float | None) -> str:
    what = "global scale (divisor)" if conv == "divide" else "weight scale (multiplier)"
    if k is None or scale is None:
        return f"cand ≈ {alpha:.4g}·ref at high cosine: a scale bug no stored scale explains"
    return f"cand ≈ {alpha:.4g}·ref ≈ s^{k:.2f} with the stored {what} s = {scale:.4g}"


def _repeated_dense_scale(rows: list[TensorAudit]) -> None:
    """Dense tensors sharing one α ≠ 1 are a factor applied again; a lone one is an unexplained mismatch."""
    dense = [r for r in rows if r.cause == "scale_mismatch" and r.scheme == "dense"]
    if not dense:
        return
    buckets = Counter(round(math.log(r.alpha), 1) for r in dense if r.alpha > 0)
    for r in dense:
        if r.alpha > 0 and buckets[round(math.log(r.alpha), 1)] >= 2:
            r.cause = "double_scale"
            r.note = (f"cand ≈ {r.alpha:.4g}·ref, the same factor on {buckets[round(math.log(r.alpha), 1)]} "
                      "dense tensors: a scale applied again (e.g. absorbed scales re-applied)")


def _layout(name: str, r: torch.Tensor, c: torch.Tensor, lin: Any, cfg: Any,
            nv_cls: type) -> tuple[str, str, float]:
    tries: list[tuple[str, str, torch.Tensor]] = []
    if r.ndim == 2 and tuple(c.T.shape) == tuple(r.shape):
        tries.append(("transposed", "candidate is the reference transposed", c.T))
    if name.endswith(("attn.q_proj.weight", "attn.k_proj.weight")):
        attn = cfg.layers[int(name.split(".")[1])].mixer
        heads = attn.n_heads if ".q_proj" in name else attn.n_kv_heads
        if r.shape[0] % (2 * heads) == 0:
            from ..families.base import qk_permutation

            perm = qk_permutation(heads, r.shape[0] // heads)
            inv = torch.argsort(perm)
            tries.append(("layout_permutation", "Q/K rows permuted for rope (llama.cpp permute applied)", c[inv]))
            tries.append(("layout_permutation", "Q/K rows permuted for rope (permutation undone twice)", c[perm]))
    if isinstance(lin, nv_cls):
        from ..kernels import nvfp4 as knv

        w = knv.dequantize_nvfp4_packed(swap_nibbles(lin.weight_packed), lin.weight_scale, lin.w_global)
        tries.append(("nibble_order", "FP4 nibbles swapped: element 0 is in the high nibble", w))
    best = ("", "", -2.0)
    for cause, note, t in tries:
        cs = cos_sim(r, t.to(r.device))
        if cs > best[2]:
            best = (cause, note, cs)
    if best[2] >= RESTORED_COS:
        return best[0], f"{best[1]} (cosine {best[2]:.4f} once undone)", best[2]
    return "garbage", "low cosine and no layout hypothesis restores it", best[2]


__all__ = ["TensorAudit", "WeightAudit", "audit_runners", "best_alpha", "classify_scale"]
