"""The typed record of one run: what was compared, on which tokens, how it went, and what the diagnosis found.

Design notes
- Every renderer reads this record (and the ``Comparison``); nobody writes into a shared
  dict. Each stage returns its own frozen result and the pipeline puts it in the record:
  ``pipeline.compare`` fills paths, model, tokens, continuations, quantization and runtime;
  ``localize.localize`` returns a ``Localization``; ``audit.after_localize`` returns
  ``Audits``; ``bisect_modules.bisect_report`` a ``BisectSummary``.
- Tables reach the reader as ``Section``s (``sections.py``): each part knows its own
  sections, and ``RunRecord.extra`` takes sections of kinds added later (e.g. MoE routing
  agreement) with no renderer change. Findings stay on the ``Report`` (``Finding`` is
  generic: a kind string and JSON-able evidence).
- ``runtime`` (timings, peak memory, memory modes) differs from run to run; report.json
  leaves it out (it goes to runtime.json) so the same inputs give the same bytes.
- Conversions from the stages' own row types (dicts, mutable dataclasses) live here as
  ``from_*`` constructors, so the stages change only where they hand results over.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from layerbisect.comparison.sections import Column, Section

# --------------------------------------------------------------------------- what was run


@dataclass(frozen=True)
class Paths:
    reference: str
    candidate: str
    candidate_kind: str = "checkpoint"  # "checkpoint" or "engine dump"


@dataclass(frozen=True)
class LayerKind:
    kind: str  # LayerSpec.kind, e.g. "attention(sliding)+dense"
    layers: int


@dataclass(frozen=True)
class ModelSummary:
    """The shared shape of both models (the pipeline refuses a candidate of another shape).

    Per-layer sizes that differ between layers are listed as their distinct values ("4, 8").
    """

    arch: str
    n_layers: int
    family: str = ""
    d_model: int | None = None
    vocab_size: int | None = None
    attention: str = ""  # e.g. "heads 4, kv heads 1, head_dim 256"
    ffn: str = ""  # e.g. "dense d_ff 2048" or "moe 64 experts × d_ff 1408, top-8"
    layer_kinds: tuple[LayerKind, ...] = ()
    final_softcap: float | None = None

    @classmethod
    def from_spec(cls, spec: Any) -> ModelSummary:
        """From a ``spec.ModelSpec`` (per-layer mixer and FFN specs)."""
        layers = list(getattr(spec, "layers", ()) or ())
        mixers = [ls.mixer for ls in layers]
        ffns = [ls.ffn for ls in layers]

        def distinct(objs: list[Any], name: str) -> str:
            vals = list(dict.fromkeys(getattr(o, name) for o in objs if getattr(o, name, None) is not None))
            return ", ".join(str(v) for v in vals)

        att = ", ".join(
            f"{label} {v}"
            for label, v in (
                ("heads", distinct(mixers, "n_heads")),
                ("kv heads", distinct(mixers, "n_kv_heads")),
                ("head_dim", distinct(mixers, "head_dim")),
                ("softcap", distinct(mixers, "softcap")),
            )
            if v
        )
        ffn_parts = []
        dense = [f for f in ffns if getattr(f, "kind", "") == "dense"]
        moe = [f for f in ffns if getattr(f, "kind", "") == "moe"]
        if dense:
            ffn_parts.append(f"dense d_ff {distinct(dense, 'd_ff')}")
        if moe:
            top_k = ", ".join(str(k) for k in dict.fromkeys(f.router.top_k for f in moe))
            ffn_parts.append(f"moe {distinct(moe, 'n_experts')} experts × d_ff {distinct(moe, 'd_ff_expert')}, "
                             f"top-{top_k}")  # fmt: skip
        both = [f for f in ffns if getattr(f, "kind", "") == "dense+moe"]  # Gemma 4: dense MLP beside the experts
        if both:
            top_k = ", ".join(str(k) for k in dict.fromkeys(f.router.top_k for f in both))
            ffn_parts.append(f"dense d_ff {distinct(both, 'd_ff')} + moe {distinct(both, 'n_experts')} experts × "
                             f"d_ff {distinct(both, 'd_ff_expert')}, top-{top_k}")
        kinds: dict[str, int] = {}
        for ls in layers:
            k = str(getattr(ls, "kind", ""))
            kinds[k] = kinds.get(k, 0) + 1
        return cls(
            arch=str(getattr(spec, "arch", "")),
            n_layers=len(layers) if layers else int(getattr(spec, "n_layers", 0)),
            family=str(getattr(spec, "family", "")),
            d_model=getattr(spec, "d_model", None),
            vocab_size=getattr(spec, "vocab_size", None),
            attention=att,
            ffn="; ".join(ffn_parts),
            layer_kinds=tuple(LayerKind(k, n) for k, n in kinds.items()),
            final_softcap=getattr(spec, "final_softcap", None),
        )


@dataclass(frozen=True)
class Tokens:
    """The sequence both sides ran: prompt plus the reference's greedy continuation, teacher-forced."""

    ids: tuple[int, ...]
    strings: tuple[str, ...]
    n_prompt: int
    prompt: str | None = None


@dataclass(frozen=True)
class Continuation:
    text: str
    ids: tuple[int, ...]


@dataclass(frozen=True)
class Continuations:
    """Each side's own greedy continuation of the prompt."""

    reference: Continuation
    candidate: Continuation

    @property
    def first_difference(self) -> int | None:
        """Index of the first generated id that differs (None when identical)."""
        a, b = self.reference.ids, self.candidate.ids
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return i
        return None if len(a) == len(b) else min(len(a), len(b))


@dataclass(frozen=True)
class SchemeCount:
    scheme: str  # weight/activation, e.g. "fp8_tensor/fp8_static_tensor"
    modules: int


@dataclass(frozen=True)
class QuantizationSummary:
    format: str
    source: str
    linear_schemes: tuple[SchemeCount, ...] = ()
    kv_cache: str | None = None

    def schemes_text(self) -> str:
        return ", ".join(f"{s.scheme} ×{s.modules}" for s in self.linear_schemes) or "-"


@dataclass(frozen=True)
class MemoryMode:
    """How one side held its weights (``streaming.py``); bytes are exact live-weight counts."""

    side: str  # reference / candidate
    mode: str  # resident / stream
    why: str = ""
    weight_bytes: int | None = None
    peak_live_weight_bytes: int | None = None
    peak_live_at: str | None = None
    layer_fp32_bytes: int | None = None
    passes: int | None = None

    @classmethod
    def from_meta(cls, side: str, m: Mapping[str, Any]) -> MemoryMode:
        keys = {f.name for f in dataclasses.fields(cls)} - {"side"}
        kw = {k: m[k] for k in keys if k in m}
        if "peak_live_at" in kw and kw["peak_live_at"] is not None:
            kw["peak_live_at"] = str(kw["peak_live_at"])
        return cls(side=side, **kw)


@dataclass(frozen=True)
class Runtime:
    """Measurements that differ between runs: kept out of report.json (runtime.json has them)."""

    timings_s: Mapping[str, float] = field(default_factory=dict)  # step → wall seconds
    peak_memory_bytes: Mapping[str, int] = field(default_factory=dict)  # host_rss, cuda:0 ... → bytes
    memory: tuple[MemoryMode, ...] = ()
    concurrent: bool = False

    def memory_mode(self, side: str) -> MemoryMode | None:
        return next((m for m in self.memory if m.side == side), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "timings_s": dict(self.timings_s),
            "peak_memory_bytes": dict(self.peak_memory_bytes),
            "memory": [dataclasses.asdict(m) for m in self.memory],
            "concurrent": self.concurrent,
        }


# --------------------------------------------------------------------------- diagnosis


@dataclass(frozen=True)
class LayerLocal:
    """One layer under activation patching: its own (local) error vs the normal run's (accumulated)."""

    layer: int
    local_cosine: float
    local_rel_l2: float
    accumulated_cosine: float
    accumulated_rel_l2: float
    added_rel_l2: float
    worst_local_op: str
    verdict: str


@dataclass(frozen=True)
class ModuleLocal:
    """One quantized linear on the reference's input of that linear, against the reference linear."""

    module: str
    layer: int | None
    op: str
    cosine: float
    rel_l2: float
    alpha: float  # best-fit scale: cand ≈ alpha·ref
    nonfinite: int
    scheme: str


@dataclass(frozen=True)
class OpLocal:
    """One capture point inside a patched layer: its local error and best-fit scale against the reference."""

    layer: int
    op: str
    cosine: float
    rel_l2: float
    alpha: float  # cand ≈ alpha·ref over the whole point: a scale applied on top shows as alpha far from 1


def _rows(cls: type, rows: Iterable[Mapping[str, Any]]) -> tuple[Any, ...]:
    """Dict rows → ``cls`` instances; keys the type lacks are dropped (a stage may compute more)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return tuple(cls(**{k: v for k, v in r.items() if k in names}) for r in rows)


@dataclass(frozen=True)
class Localization:
    layers: tuple[LayerLocal, ...] = ()  # layer order
    modules: tuple[ModuleLocal, ...] = ()  # worst local error first
    ops: tuple[OpLocal, ...] = ()  # every op of every patched layer, execution order (evidence, not a section)

    @classmethod
    def from_rows(cls, layers: Iterable[Mapping[str, Any]], modules: Iterable[Mapping[str, Any]],
                  ops: Iterable[Mapping[str, Any]] = ()) -> Localization:
        return cls(_rows(LayerLocal, layers), _rows(ModuleLocal, modules), _rows(OpLocal, ops))

    def sections(self) -> tuple[Section, ...]:
        out = []
        if self.layers:
            out.append(
                Section.from_records(
                    "local-vs-accumulated",
                    "Local vs accumulated error (activation patching)",
                    self.layers,
                    labels={
                        "local_cosine": "local cos",
                        "local_rel_l2": "local rel err",
                        "accumulated_cosine": "acc. cos",
                        "accumulated_rel_l2": "acc. rel err",
                        "added_rel_l2": "added rel err",
                        "worst_local_op": "worst local op",
                    },
                    brief=("layer", "local_rel_l2", "accumulated_rel_l2", "worst_local_op", "verdict"),
                    rank_by="local_rel_l2",
                    brief_rows=8,
                    note="local: the candidate's layer run on the reference's input to that layer; accumulated: the "
                    "normal run. 'amplifies' marks layers whose accumulated error grows far beyond their own local "
                    "error. Brief views list the layers with the largest local error first.",
                )
            )
        if self.modules:
            out.append(
                Section.from_records(
                    "per-module",
                    "Per-module local error (each quantized linear on the reference's input)",
                    self.modules,
                    labels={"rel_l2": "rel err", "nonfinite": "non-finite"},
                    brief=("module", "cosine", "rel_l2", "alpha", "scheme"),
                    rank_by="rel_l2",
                    brief_rows=10,
                    note="alpha is the best-fit scale cand ≈ alpha·ref: far from 1 at high cosine means a scale "
                    "convention bug.",
                )
            )
        return tuple(out)


@dataclass(frozen=True)
class ScaleHeadroom:
    """A static activation (or KV-cache) scale against the amax of the reference's input."""

    module: str
    layer: int
    op: str
    scale_kind: str
    limit: float
    input_amax: float
    ratio: float  # input_amax / limit: > 1 clips
    share_over: float


@dataclass(frozen=True)
class TensorCheck:
    """One tensor of the weight audit (``audit/weights.py``)."""

    name: str
    kind: str
    layer: int | None
    op: str | None
    scheme: str
    shape: str
    cosine: float
    rel_err: float
    alpha: float
    nonfinite: int
    status: str  # ok / fault / missing / extra
    cause: str
    note: str
    sqnr_db: float = math.nan  # 10·log10(‖ref‖²/‖cand−ref‖²); inf when identical
    ref_scheme: str = ""  # the reference GGUF tensor's GGML type

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class Audits:
    """Why, not only where: the cause category put on the culprit and the audits' tables."""

    cause: str = ""
    headroom: tuple[ScaleHeadroom, ...] = ()  # largest ratio first
    weights: tuple[TensorCheck, ...] = ()  # faults first, then every other tensor

    @classmethod
    def build(cls, cause: str, headroom: Iterable[Mapping[str, Any]], weight_rows: Iterable[Any]) -> Audits:
        """``headroom``: dict rows of ``audit.activations``; ``weight_rows``: ``TensorAudit``s (or mappings)."""
        hr = sorted(_rows(ScaleHeadroom, headroom), key=lambda r: -_finite_or_inf(r.ratio))
        names = {f.name for f in dataclasses.fields(TensorCheck)}
        checks = []
        for r in weight_rows:
            d = r.row() if hasattr(r, "row") else dict(r)
            d = {k: v for k, v in d.items() if k in names}
            if isinstance(d.get("shape"), tuple):
                d["shape"] = "x".join(str(s) for s in d["shape"])
            checks.append(TensorCheck(**d))
        checks.sort(key=lambda t: t.ok)  # stable: faults first, each group in audit order
        return cls(cause, tuple(hr), tuple(checks))

    @property
    def weight_faults(self) -> tuple[TensorCheck, ...]:
        return tuple(t for t in self.weights if not t.ok)

    def sections(self) -> tuple[Section, ...]:
        out = []
        if self.headroom:
            out.append(
                Section.from_records(
                    "scale-headroom",
                    "Static scale headroom (reference activations vs what each static scale can represent)",
                    self.headroom,
                    labels={"input_amax": "input amax", "share_over": "share over", "scale_kind": "scale"},
                    brief=("module", "scale_kind", "ratio", "share_over"),
                    rank_by="ratio",
                    brief_rows=8,
                    note="ratio = input amax / representable limit; > 1 clips (or NaN in a non-saturating kernel). "
                    "FP8: 448·input_scale; NVFP4: 6·448/input_global_scale per 16-block; KV: 448·k_scale/v_scale.",
                )
            )
        if self.weights:
            faults = self.weight_faults
            out.append(
                Section.from_records(
                    "weight-audit",
                    "Weight audit (candidate tensors dequantized vs reference)",
                    self.weights,
                    labels={"rel_err": "rel err", "nonfinite": "non-finite"},
                    brief=("name", "cause", "cosine", "alpha", "note"),
                    brief_rows=min(len(faults), 10),
                    text=f"{len(faults)} fault(s) in {len(self.weights)} tensors."
                    if faults
                    else f"No fault in {len(self.weights)} tensors.",
                    note="alpha: best-fit scale cand ≈ alpha·ref; cause from the stored scale's powers and layout "
                    "checks (docs/AUDIT.md).",
                )
            )
        return tuple(out)


@dataclass(frozen=True)
class BisectRun:
    quantized: int  # modules kept quantized in this run
    passed: bool
    min_residual_cosine: float | None = None
    logit_mean_kl: float | None = None
    top1_agreement: float | None = None


@dataclass(frozen=True)
class BisectSummary:
    culprits: tuple[str, ...]
    verdict: str  # culprits / not_in_linears / all_pass
    runs: int
    n_modules: int
    history: tuple[BisectRun, ...] = ()
    after_passed: bool | None = None

    @classmethod
    def from_result(cls, res: Any) -> BisectSummary:
        """From ``bisect_modules.BisectResult``."""
        return cls(
            culprits=tuple(res.culprits),
            verdict=str(res.verdict),
            runs=int(res.runs),
            n_modules=int(res.n_modules),
            history=_rows(BisectRun, res.history),
            after_passed=res.after_passed,
        )

    def sections(self) -> tuple[Section, ...]:
        return (
            Section.from_records(
                "module-bisect",
                "Module bisect (quantized modules vs reference precision)",
                self.history,
                labels={"quantized": "modules quantized", "min_residual_cosine": "min residual cos"},
                brief_rows=len(self.history),
                text=f"verdict: {self.verdict}; culprits: {', '.join(self.culprits) or '-'}; {self.runs} runs over "
                f"{self.n_modules} modules.",
                note="Each row is one run: how many modules stayed quantized and whether the gate passed.",
            ),
        )


# --------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class RunRecord:
    """Everything about a run except the comparison's numbers and the findings (see module notes)."""

    title: str = ""
    labels: tuple[tuple[str, str], ...] = ()  # free-form (name, value) pairs, e.g. ("scheme", "FP8")
    paths: Paths | None = None
    model: ModelSummary | None = None
    tokens: Tokens | None = None
    continuations: Continuations | None = None
    quantization: QuantizationSummary | None = None
    runtime: Runtime | None = None
    localization: Localization | None = None
    audits: Audits | None = None
    bisect: BisectSummary | None = None
    kld: Any = None  # comparison.kld.KLDStats: llama-perplexity --kl-divergence statistics of the logits
    extra: tuple[Section, ...] = ()  # sections of any other kind, rendered as they come

    def label(self, name: str) -> str | None:
        return next((v for k, v in self.labels if k == name), None)

    def sections(self) -> tuple[Section, ...]:
        out: list[Section] = []
        for part in (self.kld, self.localization, self.audits, self.bisect):
            if part is not None:
                out += part.sections()
        return (*out, *self.extra)

    def to_dict(self) -> dict[str, Any]:
        """Deterministic content for report.json: no runtime; extra sections go under the report's "sections"."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("runtime", "extra")}
        return {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in d.items()}


def _finite_or_inf(x: float) -> float:
    return math.inf if isinstance(x, float) and math.isnan(x) else x


__all__ = [
    "Audits",
    "BisectRun",
    "BisectSummary",
    "Column",
    "Continuation",
    "Continuations",
    "LayerKind",
    "LayerLocal",
    "Localization",
    "MemoryMode",
    "ModelSummary",
    "ModuleLocal",
    "Paths",
    "QuantizationSummary",
    "RunRecord",
    "Runtime",
    "ScaleHeadroom",
    "SchemeCount",
    "Section",
    "TensorCheck",
    "Tokens",
]
