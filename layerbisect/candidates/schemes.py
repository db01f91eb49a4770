"""What each linear layer of a quantized HF checkpoint is: parse ``quantization_config`` into ``LinearScheme``s.

Two producers are understood:

compressed-tensors (``config.json`` → ``quantization_config.quant_method == "compressed-tensors"``)
    ``config_groups``: each group has ``targets`` (class names such as ``"Linear"``, exact module names, or
    ``"re:<regex>"``, matched with ``re.match`` as ``compressed_tensors.utils.match.match_name`` does),
    ``weights`` / ``input_activations`` quantization args (``num_bits``, ``type``, ``strategy``, ``group_size``,
    ``block_structure``, ``dynamic``), and an optional per-group ``format``; the top-level ``format`` is the default.
    ``ignore`` lists exact names and ``re:`` patterns. ``kv_cache_scheme`` is one args dict or null.
    The later group wins when two groups target the same module by name; a name/regex target beats a class target
    (compressed-tensors resolves the most specific target first).

NVIDIA ModelOpt (``quant_method == "modelopt"`` in config.json, and/or ``hf_quant_config.json`` with
``quantization.quant_algo``)
    ``FP8`` (per-tensor weight + static per-tensor input scale), ``FP8_PER_CHANNEL_PER_TOKEN``, ``FP8_PB_WO``
    (128x128 block weights, no activation quantization), ``NVFP4`` (W4A4), ``W4A16_NVFP4``. ``exclude_modules``
    (``ignore`` in config.json) are fnmatch wildcards (vLLM ``modelopt.py::is_layer_excluded``).
    ``kv_cache_quant_algo`` ``FP8`` / ``NVFP4``.
    Tensor names per module: ``weight``, ``weight_scale``, ``input_scale`` and for NVFP4 ``weight_scale_2``;
    every ModelOpt scale is a multiplier (``qlinear.py`` restates the conventions where it loads them).

Anything else (an unknown ``quant_method``, ``format``, ``quant_algo`` or an args combination we cannot emulate)
raises ``InputError(<file>, <problem naming the value>)``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from layerbisect.errors import InputError

WeightKind = Literal["dense", "fp8_tensor", "fp8_channel", "fp8_block", "nvfp4", "int4_group"]
ActKind = Literal["none", "fp8_static_tensor", "fp8_dynamic_token", "fp8_dynamic_group", "nvfp4"]

CT_FORMATS = {
    "dense", "float-quantized", "naive-quantized", "nvfp4-pack-quantized", "pack-quantized", "int-quantized",
}
MODELOPT_ALGOS = {"FP8", "FP8_PER_CHANNEL_PER_TOKEN", "FP8_PB_WO", "NVFP4", "W4A16_NVFP4"}
LINEAR_CLASS_TARGETS = {"Linear", "nn.Linear", "torch.nn.Linear", "LinearBase"}


@dataclass(frozen=True)
class LinearScheme:
    weight: WeightKind
    act: ActKind
    block: tuple[int, int] | None  # fp8_block weights: (rows, cols) of one scale block
    group_size: int | None  # nvfp4: 16; int4_group: its group; fp8_dynamic_group activations: 128
    source: str  # "compressed-tensors" / "modelopt" / "none"
    act_group_size: int | None = None  # activation group (fp8_dynamic_group: 128, nvfp4: 16)

    @property
    def is_dense(self) -> bool:
        return self.weight == "dense"


DENSE = LinearScheme("dense", "none", None, None, "none")


@dataclass(frozen=True)
class KVCacheScheme:
    dtype: str  # "fp8_e4m3" / "nvfp4" / "int8"
    strategy: str  # "tensor" / "head" / ...
    source: str


@dataclass
class _Rule:
    targets: list[str]
    scheme: LinearScheme


@dataclass
class CheckpointQuant:
    """Per-module schemes of one checkpoint. ``scheme_for`` is dense for ignored / untargeted modules."""

    format_name: str
    raw: dict
    kv_cache: KVCacheScheme | None = None
    source: str = "none"
    rules: list[_Rule] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)

    def is_ignored(self, hf_module_name: str) -> bool:
        if self.source == "modelopt":
            return _modelopt_excluded(hf_module_name, self.ignore)
        return any(_ct_match(hf_module_name, t) for t in self.ignore)

    def scheme_for(self, hf_module_name: str) -> LinearScheme:
        if not self.rules or self.is_ignored(hf_module_name):
            return DENSE
        by_name = [r for r in self.rules if any(_ct_match(hf_module_name, t) for t in r.targets if not _is_class(t))]
        if by_name:
            return by_name[-1].scheme
        by_class = [r for r in self.rules if any(_is_class(t) for t in r.targets)]
        return by_class[-1].scheme if by_class else DENSE


# ---------------------------------------------------------------------------------------------------------------
# matching
# ---------------------------------------------------------------------------------------------------------------


def _is_class(target: str) -> bool:
    return target in LINEAR_CLASS_TARGETS


def _ct_match(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


def _modelopt_excluded(name: str, patterns: list[str]) -> bool:
    for p in patterns:
        if p == name or fnmatch.fnmatch(name, p):
            return True
        # "module_path*" means the module and its whole subtree (vLLM modelopt.py apply_vllm_mapper)
        if p.endswith("*") and not p.endswith(".*") and (name == p[:-1] or name.startswith(p[:-1] + ".")):
            return True
        if p.endswith(".*") and name == p[:-2]:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# compressed-tensors
# ---------------------------------------------------------------------------------------------------------------


def _args(g: dict, key: str, where: str, group: str) -> dict | None:
    """A group's quantization args: an object or null; its numeric fields typed (``validation.py``)."""
    from layerbisect.validation import as_int

    a = g.get(key)
    if a is None:
        return None
    if not isinstance(a, dict):
        raise InputError(where, f"{group}.{key} must be an object or null, got {type(a).__name__}")
    w = f"{where}: {group}.{key}"
    for k in ("num_bits", "group_size"):
        if a.get(k) is not None:
            as_int(a[k], k, where=w, lo=1, hi=1 << 16)
    for k in ("type", "strategy"):
        if a.get(k) is not None and not isinstance(a[k], str):
            raise InputError(w, f"{k!r} must be a string, got {type(a[k]).__name__}")
    bs = a.get("block_structure")
    if bs is not None:
        if not (isinstance(bs, list) and len(bs) == 2):
            raise InputError(w, f"'block_structure' must be [rows, cols], got {bs!r}")
        for v in bs:
            as_int(v, "block_structure", where=w, lo=1, hi=1 << 16)
    return a


def _patterns(v: Any, key: str, where: str) -> list[str]:
    """A list of module names / ``re:`` patterns (a bare string is one); regexes compiled here, not at match time."""
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(t, str) for t in v):
        raise InputError(where, f"{key} must be a list of strings, got {v!r:.80}")
    for t in v:
        if t.startswith("re:"):
            try:
                re.compile(t[3:])
            except re.error as e:
                raise InputError(where, f"{key}: {t!r} is not a valid regular expression ({e})") from None
    return list(v)


def _ct_weight(args: dict | None, where: str, group: str) -> tuple[WeightKind, tuple[int, int] | None, int | None]:
    if args is None:
        return "dense", None, None
    typ, bits, strat = args.get("type", "int"), args.get("num_bits"), args.get("strategy")
    if typ == "float" and bits == 8:
        if strat == "tensor":
            return "fp8_tensor", None, None
        if strat == "channel":
            return "fp8_channel", None, None
        if strat == "block":
            bs = args.get("block_structure")
            if not (isinstance(bs, (list, tuple)) and len(bs) == 2):
                raise InputError(where, f"{group}: block weights need block_structure [rows, cols], got {bs!r}")
            return "fp8_block", (int(bs[0]), int(bs[1])), None
    if typ == "float" and bits == 4 and strat == "tensor_group" and args.get("group_size") == 16:
        return "nvfp4", None, 16
    if typ == "int" and bits == 4 and strat == "group" and args.get("symmetric", True):
        return "int4_group", None, int(args.get("group_size") or 128)
    raise InputError(
        where,
        f"{group}: unsupported weight quantization type={typ!r} num_bits={bits!r} strategy={strat!r} "
        f"group_size={args.get('group_size')!r}",
    )


def _ct_act(args: dict | None, where: str, group: str) -> tuple[ActKind, int | None]:
    if args is None:
        return "none", None
    typ, bits, strat, dyn = args.get("type", "int"), args.get("num_bits"), args.get("strategy"), args.get("dynamic")
    if typ == "float" and bits == 8:
        if strat == "tensor" and dyn in (False, None):
            return "fp8_static_tensor", None
        if strat == "token" and dyn is True:
            return "fp8_dynamic_token", None
        if strat == "group" and dyn is True:
            return "fp8_dynamic_group", int(args.get("group_size") or 128)
    if typ == "float" and bits == 4 and strat == "tensor_group" and args.get("group_size") == 16:
        # dynamic "local": per-block scales on the fly, static calibrated global scale (input_global_scale)
        return "nvfp4", 16
    raise InputError(
        where,
        f"{group}: unsupported input_activations type={typ!r} num_bits={bits!r} strategy={strat!r} dynamic={dyn!r}",
    )


def _kv_from_args(args: dict | None, source: str, where: str) -> KVCacheScheme | None:
    if not args:
        return None
    typ, bits = args.get("type"), args.get("num_bits")
    if typ == "float" and bits == 8:
        dtype = "fp8_e4m3"
    elif typ == "float" and bits == 4:
        dtype = "nvfp4"
    elif typ == "int" and bits == 8:
        dtype = "int8"
    else:
        raise InputError(where, f"unsupported kv_cache_scheme type={typ!r} num_bits={bits!r}")
    return KVCacheScheme(dtype, str(args.get("strategy", "tensor")), source)


def _parse_ct(qc: dict, where: str) -> CheckpointQuant:
    top_format = qc.get("format") or "dense"
    if not isinstance(top_format, str):
        raise InputError(where, f"quantization_config.format must be a string, got {top_format!r:.60}")
    groups = qc.get("config_groups") or {}
    if not isinstance(groups, dict):
        raise InputError(where, f"config_groups must be a mapping, got {type(groups).__name__}")
    rules: list[_Rule] = []
    formats = set()
    for gname, g in groups.items():
        if not isinstance(g, dict):
            raise InputError(where, f"config_groups.{gname} must be an object, got {type(g).__name__}")
        fmt = g.get("format") or top_format
        if not isinstance(fmt, str) or fmt not in CT_FORMATS:
            raise InputError(where, f"{gname}: unsupported compressed-tensors format {fmt!r:.60}")
        formats.add(fmt)
        targets = _patterns(g.get("targets"), f"config_groups.{gname}.targets", where)
        wkind, block, gsize = _ct_weight(_args(g, "weights", where, gname), where, gname)
        akind, agroup = _ct_act(_args(g, "input_activations", where, gname), where, gname)
        if fmt == "dense":
            wkind, block, gsize = "dense", None, None
        if fmt == "nvfp4-pack-quantized" and wkind != "nvfp4":
            raise InputError(where, f"{gname}: format nvfp4-pack-quantized with {wkind} weights")
        rules.append(_Rule(list(targets), LinearScheme(wkind, akind, block, gsize, "compressed-tensors", agroup)))
    if top_format not in CT_FORMATS and top_format != "mixed-precision":
        raise InputError(where, f"unsupported compressed-tensors format {top_format!r}")
    ignore = _patterns(qc.get("ignore"), "ignore", where)
    kv_args = qc.get("kv_cache_scheme")
    if kv_args is not None and not isinstance(kv_args, dict):
        raise InputError(where, f"kv_cache_scheme must be an object or null, got {type(kv_args).__name__}")
    return CheckpointQuant(
        format_name=top_format if len(formats) <= 1 else "mixed-precision",
        raw=qc,
        kv_cache=_kv_from_args(kv_args, "compressed-tensors", where),
        source="compressed-tensors",
        rules=rules,
        ignore=list(ignore),
    )


# ---------------------------------------------------------------------------------------------------------------
# ModelOpt
# ---------------------------------------------------------------------------------------------------------------

_MODELOPT_SCHEMES: dict[str, LinearScheme] = {
    "FP8": LinearScheme("fp8_tensor", "fp8_static_tensor", None, None, "modelopt"),
    "FP8_PER_CHANNEL_PER_TOKEN": LinearScheme("fp8_channel", "fp8_dynamic_token", None, None, "modelopt"),
    "FP8_PB_WO": LinearScheme("fp8_block", "none", (128, 128), None, "modelopt"),
    "NVFP4": LinearScheme("nvfp4", "nvfp4", None, 16, "modelopt", 16),
    "W4A16_NVFP4": LinearScheme("nvfp4", "none", None, 16, "modelopt"),
}


def _parse_modelopt(qc: dict, where: str) -> CheckpointQuant:
    if isinstance(qc.get("quantization"), dict):  # hf_quant_config.json / legacy nesting
        inner = qc["quantization"]
        algo = inner.get("quant_algo")
        kv_algo = inner.get("kv_cache_quant_algo")
        exclude = inner.get("exclude_modules") or []
        group_size = inner.get("group_size")
    else:  # config.json style
        algo = qc.get("quant_algo")
        kv = qc.get("kv_cache_scheme")
        kv_algo = qc.get("kv_cache_quant_algo")
        if kv_algo is None and isinstance(kv, dict) and kv.get("type") == "float" and kv.get("num_bits") == 8:
            kv_algo = "FP8"
        exclude = qc.get("ignore") or qc.get("exclude_modules") or []
        group_size = qc.get("group_size")
    if not algo:
        raise InputError(where, "ModelOpt config has no quant_algo")
    if not isinstance(algo, str) or (kv_algo is not None and not isinstance(kv_algo, str)):
        raise InputError(where, f"quant_algo / kv_cache_quant_algo must be strings, got {algo!r:.40}, {kv_algo!r:.40}")
    algo_u = str(algo).upper()
    if algo_u not in MODELOPT_ALGOS:
        raise InputError(where, f"unsupported ModelOpt quant_algo {algo!r} (supported: {sorted(MODELOPT_ALGOS)})")
    scheme = _MODELOPT_SCHEMES[algo_u]
    if scheme.weight == "nvfp4" and group_size not in (None, 16):
        raise InputError(where, f"ModelOpt NVFP4 with group_size {group_size!r} (only 16 exists)")
    kv_cache = None
    if kv_algo:
        kv_u = str(kv_algo).upper()
        if kv_u not in ("FP8", "NVFP4"):
            raise InputError(where, f"unsupported ModelOpt kv_cache_quant_algo {kv_algo!r}")
        kv_cache = KVCacheScheme("fp8_e4m3" if kv_u == "FP8" else "nvfp4", "tensor", "modelopt")
    if not isinstance(exclude, list) or not all(isinstance(x, str) for x in exclude):
        raise InputError(where, f"exclude_modules must be a list of strings, got {exclude!r:.60}")
    return CheckpointQuant(
        format_name=f"modelopt-{algo_u.lower()}",
        raw=qc,
        kv_cache=kv_cache,
        source="modelopt",
        rules=[_Rule(["Linear"], scheme)],
        ignore=list(exclude),
    )


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    from layerbisect.validation import read_json

    return read_json(path, path.name)


def parse_quantization_config(config: dict, checkpoint_dir: Path) -> CheckpointQuant:
    """Parse a checkpoint's quantization description.

    ``config`` is the checkpoint's ``config.json`` (or directly its ``quantization_config``); ``checkpoint_dir`` is
    searched for ``hf_quant_config.json`` (ModelOpt) when config.json has none or says ``modelopt``.
    A checkpoint without any quantization config is dense.
    """
    checkpoint_dir = Path(checkpoint_dir)
    where = str(checkpoint_dir / "config.json")
    qc = config.get("quantization_config") if "quantization_config" in config else (
        config if "quant_method" in config else None
    )
    hf_quant = checkpoint_dir / "hf_quant_config.json"
    if qc is None:
        if hf_quant.exists():
            return _parse_modelopt(_read_json(hf_quant), str(hf_quant))
        return CheckpointQuant(format_name="dense", raw={})
    if not isinstance(qc, dict):
        raise InputError(where, f"quantization_config must be an object, got {type(qc).__name__}")
    method = str(qc.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        return _parse_ct(qc, where)
    if method.startswith("modelopt"):
        if "quant_algo" not in qc and "quantization" not in qc and hf_quant.exists():
            return _parse_modelopt(_read_json(hf_quant), str(hf_quant))
        return _parse_modelopt(qc, where)
    raise InputError(where, f"unsupported quant_method {qc.get('quant_method')!r} "
                            "(supported: 'compressed-tensors', 'modelopt')")
