"""A GGUF as the candidate: a llama.cpp quant compared with a higher-precision GGUF of the same model.

Design notes
- Same code as the reference. The candidate GGUF is opened, mapped (``map_tensors``) and
  dequantized (``dequantize_source``) exactly as the reference is (``references/gguf_model``),
  so both sides differ only in their tensors' bits. What the candidate runner adds is what a
  candidate must say about itself: which tensor of the file each graph parameter came from
  and its GGML type (``tensor_types``), and, per linear module, a scheme for the reports.
- Every ``nn.Linear`` of the graph becomes a ``GGUFLinear``: an ``nn.Linear`` (same FP32
  weight, same ``F.linear``; nothing to emulate, llama.cpp's dequantization *is* the format)
  that carries the quantized-linear interface the diagnosis reads: ``scheme.weight`` (the
  GGML type name: ``Q4_K``, ``Q6_K``, ``IQ4_XS``, …; ``scheme.format == "gguf"``),
  ``dequantized_weight()``, and the GGUF tensor it came from. So localization, the weight
  audit and ``--bisect`` (which swaps a module for the reference's) name a module with its type.
- A tied ``lm_head`` (``token_embd`` read twice) is not a separate quantized linear, as for the
  checkpoint candidate; the tensor-level views (audit, ``restore.py``) cover ``token_embd``.
- F32 tensors in the candidate are not "quantized" (``GGUFScheme.quantized``): ``--bisect``
  leaves them out; F16/BF16 tensors round, so they count.
- Same model (``check_same_gguf_model``): the shapes per layer (``ModelSpec.shape_signature``,
  via ``runner.check_same_model``) and the vocabulary (the GGUF tokenizers' fingerprints: every
  id means the same string, same BOS/EOS). Two GGUFs that differ there are two models: a
  one-line ``InputError``, not a comparison.
- Streaming works as for the reference: ``part_source`` is a ``streaming.GGUFSource`` whose
  layers get their ``GGUFLinear``s as they are built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import torch
from torch import nn

from ..errors import InputError
from ..graph import get_module, set_module
from ..graph.inventory import linear_modules
from ..graph.names import GGUFSource
from ..references.runner import ReferenceRunner
from ..runner import ModelRunner, check_same_model

UNQUANTIZED = frozenset({"F32", "F64"})


@dataclass(frozen=True)
class GGUFScheme:
    """How one GGUF tensor is stored, in the shape the reports read from a ``LinearScheme`` (``weight``, ``act``).

    ``weight``: the GGML type name (gguf-py's ``GGMLQuantizationType``); ``bits_per_weight``
    from ``gguf.GGML_QUANT_SIZES`` (type_size · 8 / block_size). llama.cpp never quantizes
    activations for the result (its quantized dot products round the input to Q8 blocks on
    the fly, an engine detail), so ``act`` is ``"none"``.
    """

    weight: str
    bits_per_weight: float
    act: str = "none"
    format: str = "gguf"

    @property
    def quantized(self) -> bool:
        return self.weight not in UNQUANTIZED

    @property
    def is_dense(self) -> bool:
        return not self.quantized

    @classmethod
    def of(cls, qtype: gguf.GGMLQuantizationType | int) -> GGUFScheme:
        qt = gguf.GGMLQuantizationType(int(qtype))
        block, size = gguf.GGML_QUANT_SIZES[qt]
        return cls(qt.name, 8.0 * size / block)


class GGUFLinear(nn.Linear):
    """An ``nn.Linear`` whose FP32 weight was dequantized from a GGUF tensor of type ``scheme.weight``."""

    def __init__(self, lin: nn.Linear, scheme: GGUFScheme, source: GGUFSource):
        super().__init__(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        self.weight = lin.weight
        self.bias = lin.bias
        self.scheme = scheme
        self.source = source  # the GGUF tensor (and expert index of a stacked tensor)

    def dequantized_weight(self) -> torch.Tensor:
        """The weight as the forward uses it: FP32 (out_features, in_features)."""
        return self.weight.detach()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, gguf={self.source.tensor}:{self.scheme.weight}"


@dataclass(frozen=True)
class TensorUnit:
    """One GGUF tensor of the candidate as a unit to restore (``restore.py``) or bisect (``bisect_modules``).

    ``modules``: the graph modules that read it (a linear; every expert of a stacked tensor;
    ``embed`` and a tied ``lm_head`` for ``token_embd``), swapped together for the reference's.
    """

    name: str  # canonical: the module, ``layers.{i}.mlp.experts.*.gate_proj`` for a stacked tensor
    tensor: str  # the GGUF tensor: blk.3.ffn_down.weight
    modules: tuple[str, ...]
    scheme: GGUFScheme
    nbytes: int
    layer: int | None

    @property
    def role(self) -> str:
        """The tensor's name without its block index (``ffn_down``): what llama-quantize's --tensor-type matches."""
        parts = self.tensor.removesuffix(".weight").split(".")
        return ".".join(parts[2:]) if parts[0] == "blk" else ".".join(parts)

    @property
    def label(self) -> str:
        return f"{self.tensor} {self.scheme.weight}"


def param_types(f: Any, tmap: Any) -> dict[str, GGUFScheme]:
    """Graph parameter → the scheme of the GGUF tensor it is read from (``tmap``: ``map_tensors``'s result)."""
    return {name: GGUFScheme.of(f.tensors[src.tensor].tensor_type) for name, src in tmap.sources.items()}


def wrap_linears(model: nn.Module, tmap: Any, schemes: Mapping[str, GGUFScheme], prefix: str = "") -> list[str]:
    """Swap every ``nn.Linear`` of ``model`` (names relative to ``prefix``) for a ``GGUFLinear``; returns their names.

    ``tmap.sources`` and ``schemes`` are keyed by full canonical names (``prefix`` + relative).
    A linear without a source of its own (a tied ``lm_head``) is left alone and not returned.
    """
    out = []
    for rel in linear_modules(model):
        full = f"{prefix}{rel}"
        src = tmap.sources.get(f"{full}.weight")
        if src is None:
            continue
        lin = get_module(model, rel)
        if not isinstance(lin, GGUFLinear):
            set_module(model, rel, GGUFLinear(lin, schemes[f"{full}.weight"], src))
        out.append(full)
    return out


class GGUFCandidateRunner(ReferenceRunner):
    """A quantized GGUF as the candidate (see the module notes); ``kind == "candidate"``."""

    kind = "candidate"
    fmt = "gguf"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        progress: Callable[[str, int, int], None] | None = None,
    ):
        super().__init__(path, device=device, progress=progress)
        self.load_notes: dict[str, list[str]] = {"missing": [], "unused": []}  # the GGUF loader refuses both
        self.linear_names: dict[str, str] = {}  # canonical module → GGUF tensor
        self.tmap: Any = None
        self.schemes: dict[str, GGUFScheme] = {}  # canonical parameter → its tensor's scheme

    def _build(self) -> None:
        from ..references.gguf_model import map_tensors, read_spec

        super()._build()
        assert self.model is not None and self.gguf is not None
        self._index(map_tensors(self.gguf, read_spec(self.gguf)))
        wrap_linears(self.model, self.tmap, self.schemes)

    def _index(self, tmap: Any) -> None:
        self.tmap = tmap
        self.schemes.update(param_types(self.gguf, tmap))  # in place: a streamed source holds this dict
        tied = self.config.tied_embeddings if self.model is not None else False
        self.linear_names = {
            p.removesuffix(".weight"): src.tensor for p, src in tmap.sources.items()
            if p.endswith(".weight") and self._is_linear(p) and not (tied and p == "lm_head.weight")
        }

    def _is_linear(self, param: str) -> bool:
        from ..graph.inventory import meta_model, params

        if not hasattr(self, "_linear_params"):
            spec = self.config
            self._linear_params = {p.name for p in params(meta_model(spec)) if p.kind == "linear"}
        return param in self._linear_params

    # -- streaming hooks (streaming.build_streamed / peek_config) ------------------------------
    def peek_spec(self) -> Any:
        from ..references.gguf_file import GGUFFile
        from ..references.gguf_model import read_spec

        return read_spec(GGUFFile(self.path))

    def part_source(self, device: torch.device) -> Any:
        """A ``streaming.GGUFSource`` whose layers come with their ``GGUFLinear``s."""
        from ..streaming import GGUFSource as StreamSource

        schemes = self.schemes

        class _Source(StreamSource):
            def layer(self, i: int, rec: Any) -> Any:
                layer = super().layer(i, rec)
                wrap_linears(layer, self.tmap, schemes, prefix=f"layers.{i}.")
                return layer

        src = _Source(self.path, device, impl=getattr(self, "dequant_impl", "auto"))
        self.gguf, self._tokenizer_reader, self.tmap = src.file, src.file.reader, src.tmap
        schemes.update(param_types(src.file, src.tmap))
        return src

    # -- what a candidate says about itself ---------------------------------------------------
    def quant_linears(self) -> Mapping[str, nn.Module]:
        """Canonical name → ``GGUFLinear`` for every linear with a tensor of its own, in execution order."""
        assert self.model is not None
        if not self.linear_names and self.tmap is not None:
            self._index(self.tmap)
        if self.streaming:
            from ..streaming import LazyModules

            tmap, schemes = self.tmap, self.schemes

            class _Lazy(LazyModules):  # layers come wrapped (part_source); the streamed head is built bare
                def __getitem__(self, name: str) -> nn.Module:
                    m = super().__getitem__(name)
                    if isinstance(m, nn.Linear) and not isinstance(m, GGUFLinear):
                        m = GGUFLinear(m, schemes[f"{name}.weight"], tmap.sources[f"{name}.weight"])
                    return m

            return _Lazy(self.model, list(self.linear_names))  # type: ignore[arg-type]
        return {n: get_module(self.model, n) for n in self.linear_names}

    def restore_units(self) -> dict[str, TensorUnit]:
        """Every quantized weight tensor of the candidate as a ``TensorUnit``, in execution order (embedding first).

        Needs a resident model (module swaps). Norms and biases (F32 in every llama.cpp quant) are not units.
        """
        assert self.model is not None and not self.streaming, "restore units need a resident model"
        self.quant_linears()  # indexes a lazily built map
        spec = self.config
        by_tensor: dict[str, list[str]] = {}
        params = ["embed.weight", *(f"{n}.weight" for n in self.linear_names)]
        for p in params:
            src = self.tmap.sources.get(p)
            if src is None or not self.schemes[p].quantized:
                continue
            by_tensor.setdefault(src.tensor, []).append(p.removesuffix(".weight"))
        out: dict[str, TensorUnit] = {}
        for tensor, mods in by_tensor.items():
            if mods == ["embed"] and spec.tied_embeddings:
                mods = ["embed", "lm_head"]
            name = mods[0]
            if len(mods) > 1 and mods[0] != "embed":  # a stacked expert tensor: one name for all experts
                parts = name.split(".")
                name = ".".join("*" if k == parts.index("experts") + 1 else x for k, x in enumerate(parts)) \
                    if "experts" in parts else name
            t = self.gguf.tensors[tensor]  # type: ignore[union-attr]
            layer = int(tensor.split(".")[1]) if tensor.startswith("blk.") else None
            out[name] = TensorUnit(name, tensor, tuple(mods), GGUFScheme.of(t.tensor_type), int(t.n_bytes), layer)
        return out

    def unit_label(self, name: str) -> str:
        """``blk.3.ffn_down.weight Q3_K`` for a unit or module name, for findings and tables."""
        units = self.restore_units()
        if name in units:
            return units[name].label
        src = self.tmap.sources.get(f"{name}.weight") if self.tmap is not None else None
        return f"{src.tensor} {self.schemes[f'{name}.weight'].weight}" if src is not None else ""

    def tensor_types(self) -> dict[str, str]:
        """Canonical parameter → GGML type name of its GGUF tensor."""
        return {k: s.weight for k, s in self.schemes.items()}

    def quant_summary(self) -> dict[str, Any]:
        """What the report records about the candidate's quantization: GGML types and their counts."""
        assert self.gguf is not None
        counts = self.gguf.type_counts()
        linear: dict[str, int] = {}
        for n in self.linear_names:
            t = self.schemes[f"{n}.weight"].weight
            linear[t] = linear.get(t, 0) + 1
        return {
            "format": "gguf",
            "source": "llama.cpp",
            "file_type": self.gguf.fields.get("general.file_type"),
            "tensor_types": dict(sorted(counts.items())),
            "linear_schemes": dict(sorted(linear.items())),
            "kv_cache": None,
        }


def check_same_gguf_model(ref: ModelRunner, cand: ModelRunner) -> None:
    """Refuse two GGUFs that are not the same model: shapes per layer, then the vocabulary.

    Raises ``InputError`` naming the candidate and the first difference (one line).
    """
    check_same_model(ref, cand)
    fr, fc = _fingerprint(ref), _fingerprint(cand)
    if fr and fc and fr != fc:
        nr, nc = ref.tokenizer.vocab_size, cand.tokenizer.vocab_size
        raise InputError(cand.path, f"is not the same model as {ref.path}: the vocabulary differs "
                                    f"({nr} tokens, fingerprint {fr} vs {nc} tokens, fingerprint {fc})")


def _fingerprint(r: ModelRunner) -> str | None:
    tok = r.tokenizer
    try:
        return tok.fingerprint() if tok is not None else None
    except Exception:  # no tokenizer metadata in the file: shapes are all we can check
        return None


__all__ = [
    "GGUFCandidateRunner",
    "GGUFLinear",
    "GGUFScheme",
    "TensorUnit",
    "check_same_gguf_model",
    "param_types",
    "wrap_linears",
]
