"""What every family adapter shares: typed readers of GGUF metadata and HF configs, and the adapter base class.

An adapter (one module per family in this package) subclasses ``Family``, names the GGUF
architectures and HF ``model_type``s it reads, and turns their metadata into a ``ModelSpec``.
It may override tensor names (``hf_names``/``gguf_names``: canonical module pattern →
name, see ``graph/names.py``) and HF conventions (``hf_row_permutation``). Nothing outside
an adapter branches on an architecture's name.

Readers raise ``InputError`` naming the file and the key for a missing required field, a
value of the wrong type, or one out of its sane range, before any tensor is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import InputError
from ..spec import ModelSpec, RopeScaling

MAX_DIM = 1 << 20  # widths, vocabularies and head counts beyond this are corrupt metadata, not models
MAX_LAYERS = 4096


def _check_int(value: Any, where: str, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not
                                                                           value.is_integer()):
        raise InputError(where, f"{key} is {value!r}, not an integer")
    v = int(value)
    if not lo <= v <= hi:
        raise InputError(where, f"{key} is {v}, outside the sane range {lo}..{hi}")
    return v


def check_float(value: Any, where: str, key: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(where, f"{key} is {value!r}, not a number")
    v = float(value)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise InputError(where, f"{key} is {v}, outside the sane range {lo}..{hi}")
    return v


class GGUFMeta:
    """GGUF metadata of one architecture: ``get("embedding_length")`` reads ``{arch}.embedding_length``.

    Per-layer values may be a scalar or an array of ``block_count`` entries (llama.cpp's
    ``get_key_or_arr``); ``per_layer`` returns one value per layer either way.
    """

    def __init__(self, fields: dict[str, Any], tensors: Sequence[str], n_vocab: int, path: str | Path):
        self.fields = fields
        self.tensors = set(tensors)
        self.n_vocab = n_vocab
        self.path = str(path)
        self.arch = str(fields.get("general.architecture"))

    def key(self, name: str) -> str:
        return f"{self.arch}.{name}"

    def has(self, name: str) -> bool:
        return self.key(name) in self.fields

    def get(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        k = self.key(name)
        if k not in self.fields:
            if required:
                raise InputError(self.path, f"GGUF metadata lacks {k!r}")
            return default
        return self.fields[k]

    def int(self, name: str, default: Any = None, *, required: bool = False, lo: int = 1, hi: int = MAX_DIM) -> int:
        v = self.get(name, default, required=required)
        if isinstance(v, list):
            raise InputError(self.path, f"{self.key(name)} is an array where one value belongs")
        return _check_int(v, self.path, self.key(name), lo, hi)

    def float(self, name: str, default: Any = None, *, required: bool = False, lo: float = -1e30,
              hi: float = 1e30) -> float:
        return check_float(self.get(name, default, required=required), self.path, self.key(name), lo, hi)

    def opt_float(self, name: str, lo: float = 0.0, hi: float = 1e30) -> float | None:
        v = self.get(name)
        return None if v is None else check_float(v, self.path, self.key(name), lo, hi)

    def per_layer(self, name: str, n_layers: int, default: Any = None, *, required: bool = False,
                  lo: int = 0, hi: int = MAX_DIM) -> list[int]:
        v = self.get(name, default, required=required)
        if isinstance(v, list):
            if len(v) != n_layers:
                raise InputError(self.path, f"{self.key(name)} has {len(v)} entries for {n_layers} layers")
            return [_check_int(x, self.path, f"{self.key(name)}[{j}]", lo, hi) for j, x in enumerate(v)]
        return [_check_int(v, self.path, self.key(name), lo, hi)] * n_layers

    def flags(self, name: str, n_layers: int) -> list[bool] | None:
        """A per-layer bool array (``attention.sliding_window_pattern``), or None when absent."""
        v = self.get(name)
        if v is None:
            return None
        if isinstance(v, list):
            if len(v) != n_layers:
                raise InputError(self.path, f"{self.key(name)} has {len(v)} entries for {n_layers} layers")
            return [bool(x) for x in v]
        p = _check_int(v, self.path, self.key(name), 0, MAX_LAYERS)  # an int n: every n-th layer is dense
        return [p > 0 and (j + 1) % p != 0 for j in range(n_layers)]

    def n_layers(self) -> int:
        return self.int("block_count", required=True, hi=MAX_LAYERS)

    def rope_scaling(self) -> RopeScaling:
        kind = self.get("rope.scaling.type")
        if kind in (None, "none"):
            return RopeScaling()
        if kind == "linear":
            return RopeScaling(kind="linear", factor=self.float("rope.scaling.factor", 1.0, lo=1e-6, hi=1e6))
        raise InputError(self.path, f"rope scaling {kind!r} is not supported (supported: none, linear, "
                                    "llama3 as a rope_freqs tensor)")


class HFConfig:
    """A HF ``config.json`` (the text config of multimodal wrappers), with per-layer overrides.

    ``layer(i, key)`` honours transformers 5's ``per_layer_config`` (a sparse map from layer
    index, an int or a string such as ``"05"``, to attribute overrides).
    """

    def __init__(self, cfg: dict[str, Any], path: str | Path):
        if not isinstance(cfg, dict):
            raise InputError(path, "config.json is not a JSON object")
        self.raw = cfg
        self.path = str(path)
        tc = cfg.get("text_config")
        self.cfg: dict[str, Any] = {**tc, "model_type": tc.get("model_type", cfg.get("model_type"))} \
            if isinstance(tc, dict) else cfg
        plc = self.cfg.get("per_layer_config") or {}
        if not isinstance(plc, dict):
            raise InputError(self.path, "per_layer_config is not an object")
        self.overrides: dict[int, dict[str, Any]] = {}
        for k, v in plc.items():
            try:
                self.overrides[int(k)] = dict(v)
            except (TypeError, ValueError):
                raise InputError(self.path, f"per_layer_config key {k!r} is not a layer index") from None

    @property
    def model_type(self) -> str | None:
        return self.cfg.get("model_type")

    def get(self, key: str, default: Any = None) -> Any:
        v = self.cfg.get(key)
        return default if v is None else v

    def require(self, key: str) -> Any:
        if self.cfg.get(key) is None:
            raise InputError(self.path, f"config.json lacks {key!r}")
        return self.cfg[key]

    def int(self, key: str, default: Any = None, *, lo: int = 1, hi: int = MAX_DIM, layer: int | None = None) -> int:
        v = self.layer(layer, key, default) if layer is not None else self.get(key, default)
        if v is None:
            raise InputError(self.path, f"config.json lacks {key!r}")
        return _check_int(v, self.path, key, lo, hi)

    def float(self, key: str, default: Any = None, *, lo: float = -1e30, hi: float = 1e30) -> float:
        v = self.get(key, default)
        if v is None:
            raise InputError(self.path, f"config.json lacks {key!r}")
        return check_float(v, self.path, key, lo, hi)

    def opt_float(self, key: str, lo: float = 0.0, hi: float = 1e30) -> float | None:
        v = self.get(key)
        return None if v is None else check_float(v, self.path, key, lo, hi)

    def bool(self, key: str, default: bool) -> bool:
        """true/false only: "yes", 1 or "false" in a config are typos, not booleans (validation.field_bool)."""
        from ..validation import field_bool

        return field_bool(self.cfg, key, where=self.path, default=default)

    def int_list(self, key: str, lo: int = 0, hi: int = MAX_LAYERS) -> list[int]:
        v = self.get(key, [])
        if not isinstance(v, list):
            raise InputError(self.path, f"{key} is {v!r:.40}, not a list of integers")
        return [_check_int(x, self.path, f"{key}[{j}]", lo, hi) for j, x in enumerate(v)]

    def layer(self, i: int | None, key: str, default: Any = None) -> Any:
        if i is not None and key in self.overrides.get(i, {}):
            return self.overrides[i][key]
        return self.get(key, default)

    def n_layers(self) -> int:
        return self.int("num_hidden_layers", hi=MAX_LAYERS)

    def layer_types(self, n: int) -> list[str] | None:
        lt = self.get("layer_types")
        if lt is None:
            return None
        if not isinstance(lt, list) or len(lt) != n or not all(isinstance(x, str) for x in lt):
            raise InputError(self.path, f"layer_types must be a list of {n} strings")
        return lt

    def rope(self, layer_type: str | None = None) -> dict[str, Any]:
        """The rope parameters (transformers 5 ``rope_parameters``, per layer type where nested; 4.x keys too)."""
        for key in ("rope_parameters", "rope_scaling"):
            if not isinstance(self.get(key, {}), dict):
                raise InputError(self.path, f"{key} is {self.get(key)!r:.40}, not an object")
        rp = self.get("rope_parameters")
        if isinstance(rp, dict) and layer_type is not None and isinstance(rp.get(layer_type), dict):
            rp = rp[layer_type]
        elif isinstance(rp, dict) and isinstance(rp.get("full_attention"), dict):
            rp = rp["full_attention"]
        if not isinstance(rp, dict):
            rp = dict(self.get("rope_scaling") or {})
        out = dict(rp)
        out.setdefault("rope_theta", self.get("rope_theta", 10_000.0))
        out["rope_theta"] = check_float(out["rope_theta"], self.path, "rope_theta", 1e-6, 1e30)
        return out

    def rope_scaling(self, rp: dict[str, Any]) -> RopeScaling:
        kind = rp.get("rope_type") or rp.get("type") or "default"
        if kind == "default":
            return RopeScaling()
        if kind == "linear":
            factor = check_float(rp.get("factor"), self.path, "rope factor", 1e-6, 1e6)
            return RopeScaling(kind="linear", factor=factor)
        if kind == "llama3":
            return RopeScaling(
                kind="llama3",
                factor=check_float(rp.get("factor"), self.path, "rope factor", 1e-6, 1e6),
                low_freq_factor=check_float(rp.get("low_freq_factor", 1.0), self.path, "low_freq_factor", 1e-6, 1e6),
                high_freq_factor=check_float(rp.get("high_freq_factor", 4.0), self.path, "high_freq_factor", 1e-6,
                                              1e6),
                original_context=_check_int(rp.get("original_max_position_embeddings", 8192), self.path,
                                            "original_max_position_embeddings", 1, 1 << 31),
            )
        raise InputError(self.path, f"rope scaling {kind!r} is not supported (supported: default, linear, llama3)")


class Family:
    """One family adapter. Subclasses set the class attributes and implement ``from_gguf``/``from_hf``."""

    name: ClassVar[str] = ""
    gguf_archs: ClassVar[tuple[str, ...]] = ()
    hf_model_types: ClassVar[tuple[str, ...]] = ()
    hf_names: ClassVar[dict[str, str]] = {}  # canonical module (or parameter) pattern → HF name (overrides names.HF)
    gguf_names: ClassVar[dict[str, Any]] = {}  # canonical module pattern → gguf MODEL_TENSOR / Stacked
    hf_fused: ClassVar[dict[str, Any]] = {}  # canonical module pattern → names.Fused (overrides names.HF_FUSED)

    def from_gguf(self, meta: GGUFMeta) -> ModelSpec:
        raise NotImplementedError

    def from_hf(self, cfg: HFConfig) -> ModelSpec:
        raise NotImplementedError

    def hf_row_permutation(self, module: str, spec: ModelSpec) -> torch.Tensor | None:
        """Index p such that the graph's rows of ``module`` are the HF checkpoint's rows ``[p]`` (None: same order)."""
        return None

    def gguf_transform(self, param: str, spec: ModelSpec) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """How the GGUF tensor of graph parameter ``param`` becomes the graph's (None: as stored).

        For conventions llama.cpp's converter applies that the canonical (HF) layout does not:
        a reordering of heads, a stored function of the parameter (``-exp(A_log)``), a reshape.
        The function must be shape-generic torch ops: the loader runs it on a ``meta`` tensor of
        the file's shape to check shapes before any weight is read.
        """
        return None


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's ``LlamaModel.permute``: HF (neox halves) rows → GGUF (adjacent pairs) rows.

    Works on any tensor whose dim 0 is the output feature (weights, per-row scales, bias).
    """
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *rest).transpose(1, 2).reshape(rows, *rest)


def qk_permutation(n_heads: int, head_dim: int) -> torch.Tensor:
    """Index vector p with permute_qk(w) == w[p]."""
    return permute_qk(torch.arange(n_heads * head_dim), n_heads)


__all__ = ["Family", "GGUFMeta", "HFConfig", "permute_qk", "qk_permutation"]
