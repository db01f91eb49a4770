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
- Fused projections (``graph.inventory.linear_shards``: a DeltaNet's ``in_proj_qkv`` holds q, k
  and v rows) are also fitted shard by shard: one shard at α ≈ 1 beside another at α far from
  1 with the weights themselves intact (high cosine) is one per-tensor scale applied to some
  shards only (vLLM 38197: the fused projection's scale loaded into its first shard):
  ``shard_scale``, naming the rows.
- Inventory: tensors on one side only. The reference loader refuses unmapped GGUF tensors;
  the candidate loader fills missing norms with the identity and lists them (``load_notes``),
  and lists checkpoint tensors the graph never uses. Both are silent in every engine log.
- Pure helpers (``best_alpha``, ``classify_scale``) are separate from the I/O (``audit_runners``;
  ``api.audit_weights`` opens the files).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
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
    scheme: str  # candidate: the linear's weight scheme (fp8_tensor, nvfp4, …; a GGUF candidate's GGML type)
    shape: tuple[int, ...]
    cosine: float = float("nan")
    rel_err: float = float("nan")
    sqnr_db: float = float("nan")  # 10·log10(‖ref‖²/‖cand−ref‖²); +inf when identical
    alpha: float = float("nan")
    ref_scheme: str = ""  # the reference GGUF tensor's GGML type
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


def pair_stats(ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float, float, float]:
    """(cosine, relative error, α, SQNR dB) in one float64 pass over slices; the same numbers as ``cos_sim``,
    ``rel_err``, ``best_alpha`` and ``gguf_types.sqnr_db`` (up to summation order).
    """
    rr = cc = rc = noise = 0.0
    rf, cf = ref.detach().reshape(-1), cand.detach().reshape(-1)
    step = 1 << 22  # float64 in slices: a 262k-row embedding is 170M values
    for a in range(0, rf.numel(), step):
        r, c = rf[a : a + step].double(), cf[a : a + step].double()
        rr, cc, rc = rr + float(r @ r), cc + float(c @ c), rc + float(r @ c)
        noise += float(((c - r) ** 2).sum())
    na, nb = math.sqrt(rr), math.sqrt(cc)
    if not (math.isfinite(na) and math.isfinite(nb)):
        cos = float("nan")
    elif na == 0 or nb == 0:
        cos = float(na == nb)
    else:
        cos = rc / (na * nb)
    rel = math.sqrt(noise) / na if na > 0 else (0.0 if noise == 0 else float("inf"))
    alpha = rc / rr if rr > 0 else float("nan")
    sq = math.inf if noise == 0 else (-math.inf if rr == 0 else 10.0 * math.log10(rr / noise))
    return cos, rel, alpha, sq


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
    cand_format: str = "checkpoint"  # or "gguf": faults judged per GGML type (audit/gguf_types.py)

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
            where = first.name
            if self.cand_format == "gguf":  # name the file's tensor and its type: what a user re-quantizes
                where += f" = {first.evidence.get('gguf_tensor', '?')} {first.scheme}"
                alpha += f", SQNR {first.sqnr_db:.1f} dB" if math.isfinite(first.sqnr_db) else ""
            out.append(
                Finding(
                    severity=severity,  # type: ignore[arg-type]
                    kind="weight_audit",
                    title=f"Weight audit [{cause}]: {len(rows)} tensor(s), first {where}"
                    + (f" (cosine {first.cosine:.4f}{alpha})" if math.isfinite(first.cosine) else ""),
                    point=first.name.rsplit(".", 1)[0] if first.layer is not None else None,
                    layer=first.layer,
                    op=first.op,
                    token_index=None,
                    detail=f"{first.note}{_scope(rows, self.rows)} Tensors: {', '.join(names[:8])}"
                    + (" ..." if len(names) > 8 else ""),
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


def _scope(faulty: list[TensorAudit], rows: list[TensorAudit]) -> str:
    """" — every mlp.gate_proj, mlp.up_proj and mlp.down_proj (54 tensors)." when a fault covers whole module kinds."""
    if len(faulty) < 2:
        return ""
    ops = sorted({r.op for r in faulty if r.op}, key=lambda o: [r.op for r in rows].index(o))
    whole = [o for o in ops if all(r.status != "ok" for r in rows if r.op == o and r.name.endswith(".weight"))]
    if ops and whole == ops:
        n_layers = len({r.layer for r in faulty if r.layer is not None})
        where = f" in all {n_layers} layers" if n_layers > 1 else ""
        return f" — every {', '.join(ops)}{where}: the whole module kind."
    return ""


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

    def result(self) -> tuple[int, float, float, float, float]:
        """(non-finite count, cosine, relative L2 error, best-fit α, SQNR dB) as ``pair_stats``."""
        rr, cc, rc, dd, bad = self.sums.tolist() if self.sums is not None else (0.0,) * 5
        na, nb = math.sqrt(rr) if rr >= 0 else float("nan"), math.sqrt(cc)
        if na == 0 or nb == 0 or not (math.isfinite(na) and math.isfinite(nb)):
            cos = float("nan") if not (math.isfinite(na) and math.isfinite(nb)) else float(na == nb)
        else:
            cos = rc / (na * nb)
        d = math.sqrt(dd) if dd >= 0 else float("nan")
        rel = d / na if na > 0 else (0.0 if d == 0 else float("inf"))
        alpha = rc / rr if rr > 0 else float("nan")
        sq = math.inf if dd == 0 else (-math.inf if rr == 0 else 10.0 * math.log10(rr / dd))
        return int(bad), cos, rel, alpha, sq


def _blocks_pair(rm: Any, cm: Any, name: str) -> tuple[Any, Any] | None:
    """Row blocks of a whole-vocabulary tensor on both sides, or None when one side is not row-sliceable
    (a quantized head: its module's dequantized weight is audited whole)."""
    from ..streaming import row_blocks

    cb = row_blocks(cm, name, BLOCK_BYTES)
    rb = row_blocks(rm, name, BLOCK_BYTES) if cb is not None else None
    return None if rb is None or cb is None else (rb, cb)


@torch.no_grad()
def audit_runners(ref_runner: Any, cand_runner: Any, *, scales: bool = True,
                  devices: Sequence[str | torch.device] | None = None) -> WeightAudit:
    """Audit two activated runners (reference: GGUF → FP32; candidate: quantized HF checkpoint).

    ``scales``: also check every stored scale tensor (non-finite, zero, negative: ``audit/scales.py``).
    The sides may sit on two devices: each pair is compared on one of ``devices`` (default: the
    reference's); with several (resident runners only), one thread per device takes the next tensor
    (``jobs.map_devices``): the same rows, in the same order. Dense whole-vocabulary tensors (embedding,
    head) are reduced a block of rows at a time on the reference's device (``PairSums``), so neither
    side's FP32 copy of them is ever whole beyond what its model holds (streamed: never).
    """
    from ..candidates.qlinear import FP8Linear, NVFP4Linear
    from ..graph.inventory import meta_model, params
    from ..jobs import map_devices
    from . import gguf_types as gt

    rm, cm = ref_runner.model, cand_runner.model
    ref_sd = rm.state_dict()
    cfg = rm.cfg
    lins = cand_runner.quant_linears()
    from ..graph.inventory import linear_shards

    shard_map = linear_shards(cfg)
    missing = set(getattr(cand_runner, "load_notes", {}).get("missing", []))
    missing_kinds = getattr(cand_runner, "load_notes", {}).get("missing_kinds") or {}
    # whole state dicts are lazy for a streamed model: a layer's tensors are read when asked for
    cand_sd = cm.state_dict()
    shapes = {p.name: tuple(p.shape) for p in params(meta_model(cfg))}
    ref_types = _types(ref_runner)
    cand_types = _types(cand_runner)
    is_gguf = getattr(cand_runner, "fmt", None) == "gguf"  # judged per GGML type (audit/gguf_types.py)
    sources = getattr(getattr(cand_runner, "tmap", None), "sources", {}) or {}
    names = [n for n in ref_sd if not (n == "lm_head.weight" and cfg.tied_embeddings)]

    def audit_one(name: str, dev: torch.device) -> TensorAudit:
        """One tensor's row, its pair compared on ``dev`` (a whole-vocabulary one on the reference's device)."""
        r = c = cz = None
        kind, layer, op = _kind_op(name, lins)
        module = name.rsplit(".", 1)[0]
        blocks = _blocks_pair(rm, cm, name) if name in ROW_BLOCKED and not is_gguf and name not in missing else None
        lin = lins.get(module) if blocks is None and module in lins else None
        if blocks is not None:
            shape, scheme = shapes.get(name, ()), cand_types.get(name, "dense")
        else:
            r = ref_sd[name].to(dev)
            shape = tuple(r.shape)
            if lin is not None:
                c = getattr(lin, "bias", None) if name.endswith(".bias") else _dequantized(lin)
                scheme = cand_types.get(name, lin.scheme.weight)
            else:
                c = cand_sd.get(name) if name not in missing else None
                scheme = cand_types.get(name, "dense")
        row = TensorAudit(name, kind, layer, op, scheme, shape, ref_scheme=ref_types.get(name, ""))
        if name in sources:
            row.evidence["gguf_tensor"] = sources[name].tensor
        if name in missing or (blocks is None and c is None):
            mk = missing_kinds.get(name, kind)
            row.status = "missing"
            row.cause = {"norm": "missing_norm", "scale": "missing_scale"}.get(mk, "missing_tensor")
            if mk == "scale":  # a parameter, not a module: the op is the parameter (layer_scalar, mlp.router_scale)
                row.kind, row.op = "scale", name.split(".", 2)[2] if layer is not None else name
            row.note = "absent from the candidate checkpoint; the loader ran it as the identity"
            return row
        if blocks is not None:
            sums = PairSums()
            for rb, cb in zip(*blocks):
                sums.add(rb, cb)
            if not sums.shape_ok:
                row.status, row.cause, row.note = "fault", "shape_mismatch", "candidate rows differ in shape"
                return row
            row.nonfinite, row.cosine, row.rel_err, row.alpha, row.sqnr_db = sums.result()
        else:
            c = c.float().to(dev)  # the sides may sit on two devices: compared on ``dev``
            if tuple(c.shape) != tuple(r.shape):
                sig = _transposed_permutation(r, c, kind, op, cfg, layer)
                row.status, row.cause = "fault", sig.cause if sig else "shape_mismatch"
                row.note = sig.note if sig else f"candidate shape {tuple(c.shape)}"
                return row
            row.nonfinite = int((~torch.isfinite(c)).sum())
            cz = torch.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
            row.cosine, row.rel_err, row.alpha, row.sqnr_db = pair_stats(r, cz)
            shards = shard_map.get(module) if lin is not None and name.endswith(".weight") else None
            if shards and not row.nonfinite:
                fits = shard_fits(r, cz, shards)
                row.evidence["shards"] = fits
                note = shard_fault(fits)
                if note:
                    row.status, row.cause, row.note = "fault", "shard_scale", note
                    return row
        if row.nonfinite:
            row.status, row.cause = "fault", "nonfinite"
            row.note = f"{row.nonfinite} non-finite values after dequantization"
            return row
        if is_gguf:
            _gguf_blocks(row, r, cz)
            return row
        sig = _signature(kind, r, c, lin, cfg, row)
        if sig is not None:
            row.status, row.cause, row.note = "fault", sig.cause, sig.note
            row.evidence.update(sig.evidence)
            return row
        if row.cosine < COS_OK:
            row.status = "fault"
            if r is not None and c is not None:
                row.cause, row.note, restored = _layout(name, r, c, lin, cfg, NVFP4Linear)
            else:  # a whole-vocabulary tensor is never square: no layout hypothesis applies
                row.cause, row.note, restored = "garbage", "low cosine and no layout hypothesis restores it", -2.0
            row.evidence["restored_cosine"] = restored
            return row
        scale, conv = _stored_scale(lin, FP8Linear, NVFP4Linear)
        cause, k = classify_scale(row.alpha, scale, conv)
        if cause == "scale_mismatch" and lin is not None:
            sib = _sibling(module, r, row.alpha, cand_runner, lin)
            if sib is not None:
                row.status, row.cause, row.note = "fault", sib.cause, sib.note
                row.evidence.update(sib.evidence)
                return row
        if cause:
            row.status, row.cause = "fault", cause
            row.evidence.update({"stored_scale": scale, "convention": conv, "k": k})
            row.note = _scale_note(cause, row.alpha, scale, conv, k)
        return row

    streamed = getattr(ref_runner, "streaming", False) or getattr(cand_runner, "streaming", False)
    devs = [torch.device(d) for d in (devices or [ref_runner.device])]
    rows = map_devices(audit_one, names, devs[:1] if streamed else devs)  # a streamed side reads one layer at a time
    if is_gguf:
        for row in gt.judge_tensors(rows):
            _gguf_outlier(row, ref_sd[row.name], _cand_tensor(row.name, lins, cand_sd), lins, cfg)
    _repeated_dense_scale(rows)
    if scales and getattr(cand_runner, "checkpoint", None) is not None:
        rows += _scale_rows(cand_runner.checkpoint, getattr(cand_runner, "linear_names", None))
    for extra in getattr(cand_runner, "load_notes", {}).get("unused", []):
        rows.append(TensorAudit(extra, "extra", None, None, "", (), status="extra", cause="extra_tensor",
                                note="in the candidate checkpoint, used by no module of the graph"))
    return WeightAudit(str(ref_runner.path), str(cand_runner.path), rows, "gguf" if is_gguf else "checkpoint")


def _types(runner: Any) -> dict[str, str]:
    fn = getattr(runner, "tensor_types", None)
    try:
        return fn() if callable(fn) else {}
    except Exception:  # a streamed or partial runner without a tensor map: no types to show
        return {}


def _cand_tensor(name: str, lins: Any, cand_sd: dict[str, torch.Tensor]) -> torch.Tensor:
    module, _, leaf = name.rpartition(".")
    if module in lins:
        lin = lins[module]
        return _dequantized(lin) if leaf == "weight" else lin.bias
    return cand_sd[name]


def _dequantized(lin: Any) -> torch.Tensor:
    """A candidate linear's FP32 weight: the copy its GEMM keeps when it has one (same bits, no second decode)."""
    kept = getattr(lin, "kept_weight", None)
    return kept() if callable(kept) else lin.dequantized_weight()


def _gguf_blocks(row: TensorAudit, r: torch.Tensor, c: torch.Tensor) -> None:
    """A GGUF candidate tensor: quant blocks far off the tensor's own noise are ``corrupt_blocks``."""
    from .gguf_types import block_outliers

    found = block_outliers(r, c, row.scheme)
    if found is None:
        return
    w = found["worst"][0]
    row.status, row.cause = "fault", "corrupt_blocks"
    row.evidence["blocks"] = found
    row.note = (f"{found['n_bad']} of {found['n_blocks']} {row.scheme} blocks far off the tensor's quantization "
                f"noise; worst: row {w['row']}, block {w['block']} (columns {w['cols'][0]}..{w['cols'][1] - 1}), "
                f"rel err {w['rel_err']:.3g} vs median block {found['median']:.3g}")


def _gguf_outlier(row: TensorAudit, r: torch.Tensor, c: torch.Tensor, lins: Any, cfg: Any) -> None:
    """A GGUF tensor whose SQNR is far below its type's: a layout fault if one explains it, else an outlier."""
    from ..candidates.qlinear import NVFP4Linear

    med = row.evidence.get("group_median_sqnr_db")
    ref_med = f"{med:.1f} dB for {row.evidence.get('group')} here" if med is not None else "no group to compare"
    cause, note, restored = _layout(row.name, r, c.float().to(r.device), lins.get(row.name.rsplit('.', 1)[0]), cfg,
                                    NVFP4Linear)
    row.status = "fault"
    if cause != "garbage":
        row.cause, row.note = cause, note
        row.evidence["restored_cosine"] = restored
        return
    row.cause = "quant_error_outlier"
    row.note = f"SQNR {row.sqnr_db:.1f} dB, far below what {row.scheme} gives ({ref_med})"


def _scale_rows(ck: Any, linear_names: Any = None) -> list[TensorAudit]:
    from .scales import canonical_module, scan_checkpoint

    rows = []
    for f in scan_checkpoint(ck):
        canon, layer, op = canonical_module(f.module, linear_names)
        name = f"{canon}.{f.tensor.rsplit('.', 1)[-1]}" if canon else f.tensor
        rows.append(TensorAudit(name, "scale", layer, op, "", (f.numel,), status="fault", cause=f.cause,
                                note=f.describe(), evidence={"tensor": f.tensor, "file": f.file}))
    return rows


def shard_fits(r: torch.Tensor, c: torch.Tensor, shards: Any) -> list[dict[str, Any]]:
    """Cosine and best-fit α of each shard's rows (label, first row, end row) of a fused weight."""
    return [{"shard": label, "rows": [lo, hi], "cosine": cos_sim(r[lo:hi], c[lo:hi]),
             "alpha": best_alpha(r[lo:hi], c[lo:hi])} for label, lo, hi in shards]


def shard_fault(fits: list[dict[str, Any]]) -> str | None:
    """A note when some shards match (α ≈ 1) and others carry intact weights at another scale; else None. Pure."""
    ok = [f for f in fits if f["cosine"] >= COS_OK and abs(f["alpha"] - 1) <= ALPHA_TOL]
    off = [f for f in fits if f["cosine"] >= COS_OK and abs(f["alpha"] - 1) > ALPHA_TOL]
    if not ok or not off:
        return None
    lo, hi = min(f["rows"][0] for f in off), max(f["rows"][1] for f in off)
    first = "first shard" if fits[0] in ok else "shard"
    return (f"rows {lo}:{hi} ({', '.join(f['shard'] for f in off)}) ≈ "
            + ", ".join(f"{f['alpha']:.4g}" for f in off) + "·ref while rows "
            + ", ".join(f"{f['rows'][0]}:{f['rows'][1]} ({f['shard']})" for f in ok)
            + f" match: one per-tensor scale of this fused projection applied to its {first} "
            + f"({', '.join(f['shard'] for f in ok)}) only")


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
    if best[2] >= RESTORED_COS and best[0] != "layout_permutation":
        return best[0], f"{best[1]} (cosine {best[2]:.4f} once undone)", best[2]
    # any row or column permutation, matched by nearest neighbour, with its structure named
    sig = _permutation(name, r, c, cfg)
    if sig is not None:
        return sig.cause, sig.note, float(sig.evidence.get("restored_cosine", best[2]))
    if best[2] >= RESTORED_COS:
        return best[0], f"{best[1]} (cosine {best[2]:.4f} once undone)", best[2]
    return "garbage", "low cosine and no layout hypothesis restores it", best[2]


def _heads(name: str, cfg: Any) -> tuple[int | None, int | None]:
    """(heads over the output rows, heads over the input columns) of an attention projection; else (None, None)."""
    parts = name.split(".")
    if parts[0] != "layers" or len(parts) < 4:
        return None, None
    mixer = cfg.layers[int(parts[1])].mixer
    h, kv = getattr(mixer, "n_heads", None), getattr(mixer, "n_kv_heads", None)
    leaf = parts[-2]
    if leaf == "q_proj":
        return h, None
    if leaf in ("k_proj", "v_proj"):
        return kv, None
    if leaf == "o_proj":
        return None, h
    return None, None


def _permutation(name: str, r: torch.Tensor, c: torch.Tensor, cfg: Any) -> Any:
    from .signatures import permutation

    if r.ndim != 2:
        return None
    hout, hin = _heads(name, cfg)
    return permutation(r, c, hout, hin)


def _transposed_permutation(r: torch.Tensor, c: torch.Tensor, kind: str, op: Any, cfg: Any, layer: Any) -> Any:
    """A non-square weight stored transposed (the loader reshaped nothing): candidate shape is ref's reversed."""
    from .signatures import Signature

    if r.ndim == 2 and tuple(c.shape) == tuple(r.T.shape):
        cs = cos_sim(r, c.T)
        if cs >= RESTORED_COS:
            return Signature("transposed", f"candidate is the reference transposed (cosine {cs:.4f} once undone)")
    return None


def _signature(kind: str, r: torch.Tensor, c: torch.Tensor, lin: Any, cfg: Any, row: TensorAudit) -> Any:
    """The fault signatures of ``signatures.py`` that apply to this tensor kind (first match wins)."""
    from . import signatures as sg

    off = abs(row.alpha - 1.0) > ALPHA_TOL or not row.cosine >= COS_OK
    if kind == "norm":  # gains near 1 hide an offset from α: the fit itself decides (signatures.norm_convention)
        return sg.norm_convention(r, c)
    if kind == "embedding" and off:
        return sg.embed_scale(row.alpha, float(getattr(cfg, "embed_scale", 1.0)))
    if lin is None or getattr(lin, "scheme", None) is None or lin.scheme.weight == "dense":
        return None
    if row.name.endswith(".bias"):
        return None
    pow2 = sg.pow2_scales(r, c, lin)
    if pow2 is not None:
        return pow2
    if not off:
        return None
    return sg.raw_codes(r, c, lin) or sg.exponent_offset(row.alpha, row.cosine, lin)


def _stored_file_scale(cand_runner: Any, module: str) -> tuple[float | None, str]:
    """A linear's per-tensor weight scale as the checkpoint stores it (FP8 weight_scale: multiplier; NVFP4
    weight_global_scale: divisor; ModelOpt weight_scale_2: multiplier); None when it has no scalar scale."""
    ck = getattr(cand_runner, "checkpoint", None)
    hf = getattr(cand_runner, "linear_names", {}).get(module)
    if ck is None or hf is None:
        return None, ""
    keys = set(ck.keys())
    leaves = (("weight_global_scale", "divide"), ("weight_scale_2", "multiply"), ("weight_scale", "multiply"))
    for leaf, conv in leaves:
        key = f"{hf}.{leaf}"
        if key in keys:
            t = ck.get(key)
            if t.numel() == 1:
                return float(t.float().reshape(())), conv
            return None, ""
    return None, ""


def _sibling(module: str, r: torch.Tensor, alpha: float, cand_runner: Any, lin: Any) -> Any:
    """α explained by a fused sibling's stored scale (vLLM 54974); see ``signatures.sibling_scale``."""
    from ..expected.quantize import fused_groups
    from .signatures import Signature, sibling_scale

    group = next((g for g in fused_groups(list(getattr(cand_runner, "linear_names", {}))) if module in g), None)
    if group is None:
        return None
    own, conv = _stored_file_scale(cand_runner, module)
    if own is None:
        return None
    sibs = {}
    for n in group:
        if n != module:
            v, c2 = _stored_file_scale(cand_runner, n)
            if v is not None and c2 == conv:
                sibs[n] = v
    sig = sibling_scale(alpha, own, sibs, conv)
    if sig is not None:
        return sig
    same = [n for n, v in sibs.items() if v == own]
    if same:  # the checkpoint itself holds the sibling's value: predict α from the scale the producer would derive
        amax = float(r.abs().max())
        derived = amax / 448.0 if conv == "multiply" else 448.0 * 6.0 / amax
        pred = own / derived if conv == "multiply" else derived / own
        if abs(alpha / pred - 1) < 0.05:
            return Signature("shard_scale_mismatch", f"its stored scale {own:.4g} is bit-identical to {same[0]}'s, "
                             f"while its own weights give {derived:.4g}: α {alpha:.4g} ≈ {pred:.4g} predicted",
                             {"sibling": same[0], "predicted_alpha": pred, "own_scale": own})
    return None


__all__ = ["TensorAudit", "WeightAudit", "audit_runners", "best_alpha", "classify_scale", "pair_stats", "shard_fault",
           "shard_fits"]
