"""The candidate runner: a quantized HF checkpoint through the same graph, quantized linears swapped in.

Non-linear tensors (embeddings, norms) are loaded as FP32 with HF's conventions undone
(``hf_map``). Each linear module gets its checkpoint tensors and scheme and becomes a
``QuantLinear`` (exact emulation, or native GPU kernels with ``impl="native"``). Norms the
checkpoint lacks are filled with the identity and listed in ``load_notes`` — what a lenient
engine loader does silently, and what the comparator must then be able to point at.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import config_from_hf, qk_permutation
from ..errors import InputError
from ..kv_cache import FP8KVQuant, KVCacheOptions
from ..model import Decoder
from ..runner import ModelRunner
from . import hf_map
from .checkpoint import Checkpoint
from .qlinear import QuantOptions, build_linear


class CandidateRunner(ModelRunner):
    kind = "candidate"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        options: QuantOptions | None = None,
        kv_cache: KVCacheOptions | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ):
        super().__init__(str(path), device=device)
        self.options = options or QuantOptions()
        self.kv_options = kv_cache or KVCacheOptions()
        self.progress = progress
        self.load_notes: dict[str, list[str]] = {"missing": [], "unused": []}
        self.linear_names: dict[str, str] = {}  # canonical module name → HF module name
        self.kv_quant: FP8KVQuant | None = None

    def _build(self) -> None:
        plan = self._plan()
        with torch.device("meta"):
            model = Decoder(plan.cfg)
        state, linears = self._materialize(plan, "")
        for name, lin in linears.items():
            _set_module(model, name, lin)
        model.load_state_dict(state, strict=False, assign=True)
        if plan.cfg.tied_embeddings:
            model.lm_head = _TiedHead(model.embed)
        model = model.to(self.device)
        self._setup_kv_cache(model, plan.quant, plan.kv_scales)
        self.model = model.eval()
        self.tokenizer = self.checkpoint.tokenizer()

    def _plan(self) -> _Plan:
        """Map every checkpoint key to the graph and check completeness; reads only small tensors (KV scales)."""
        ck = self.checkpoint = Checkpoint(self.path)
        cfg = config_from_hf(ck.config, path=str(ck.dir / "config.json"))
        spec = cfg.spec
        norms = hf_map.norms_for(spec.sandwich_norms)
        plan = _Plan(cfg=cfg, quant=ck.quant)
        unused: list[str] = []
        for key in ck.keys():
            s = hf_map.strip_prefix(key)
            if s in hf_map.GLOBAL:
                plan.dense[hf_map.GLOBAL[s]] = (key, spec.hf_norm_offset if s == "norm.weight" else None)
                continue
            if key.startswith("lm_head."):
                plan.groups["lm_head"][key[len("lm_head.") :]] = key
                plan.hf_module["lm_head"] = "lm_head"
                continue
            li = hf_map.split_layer(key)
            if li is None:
                unused.append(key)
                continue
            i, rest = li
            if rest in norms:
                plan.dense[f"layers.{i}.{norms[rest]}"] = (key, spec.hf_norm_offset)
                continue
            if rest in hf_map.KV_SCALES:
                plan.kv_scales[i][hf_map.KV_SCALES[rest]] = ck.get(key).float()
                continue
            for hf_lin, canon in hf_map.LINEARS.items():
                if rest.startswith(hf_lin + "."):
                    name = f"layers.{i}.{canon}"
                    plan.groups[name][rest[len(hf_lin) + 1 :]] = key
                    plan.hf_module[name] = key[: len(key) - len(rest)] + hf_lin
                    break
            else:
                if not hf_map.IGNORABLE.search(key):
                    unused.append(key)

        _check_layer_count(ck, cfg.n_layers)
        plan.linears = [f"layers.{i}.{c}" for i in range(cfg.n_layers) for c in hf_map.LINEARS.values()]
        if not cfg.tied_embeddings:
            plan.linears.append("lm_head")
        absent = [n for n in plan.linears if n not in plan.groups]
        if absent:
            raise InputError(ck.dir, f"no tensors for {len(absent)} linear modules (e.g. {', '.join(absent[:3])})")
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in Decoder(cfg).named_parameters()}
        wanted = {k for k in shapes if not any(k.startswith(lin + ".") for lin in plan.linears)}
        if cfg.tied_embeddings:
            wanted.discard("lm_head.weight")
        self.load_notes = {"missing": [], "unused": unused}
        for k in sorted(wanted - set(plan.dense)):
            if k.endswith("norm.weight"):
                # An engine that never maps this norm runs with the identity; record it, keep going.
                self.load_notes["missing"].append(k)
            else:
                raise InputError(ck.dir, f"checkpoint has no tensor for {k}")
        for name, (key, _) in plan.dense.items():  # header shapes against config.json, before any read
            if name in shapes and ck.shape(key) != shapes[name]:
                raise InputError(ck.where[key], f"tensor {key!r} has shape {ck.shape(key)}, expected "
                                                f"{shapes[name]} from config.json")
        self.linear_names = {n: plan.hf_module[n] for n in plan.linears}
        return plan

    def _materialize(self, plan: _Plan, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, nn.Module]]:
        """FP32 dense tensors and built QuantLinears of the graph names under ``prefix`` ("" = all), on CPU.

        Names are relative to ``prefix``, so a streamed layer loads them into a ``Layer`` as is.
        """
        ck, cfg, n = self.checkpoint, plan.cfg, len(prefix)
        state: dict[str, torch.Tensor] = {}
        for name, (key, offset) in plan.dense.items():
            if name.startswith(prefix):
                w = ck.get(key).float()
                state[name[n:]] = w if offset is None else w + offset
        for name in self.load_notes["missing"]:
            if name.startswith(prefix):
                shape = cfg.head_dim if ".attn.q_norm" in name or ".attn.k_norm" in name else cfg.d_model
                state[name[n:]] = torch.ones(shape)
        linears: dict[str, nn.Module] = {}
        todo = [x for x in plan.linears if x.startswith(prefix)]
        for j, name in enumerate(todo):
            if self.progress and not prefix:
                self.progress(name, j, len(todo))
            hf_name = plan.hf_module[name]
            try:
                tensors = {suffix: ck.get(key) for suffix, key in plan.groups[name].items()}
                _check_primary_shape(hf_name, tensors, _linear_shape(cfg, name))
                lin = build_linear(hf_name, tensors, plan.quant.scheme_for(hf_name), self.options)
            except InputError as e:  # the module's problem, said with the file that holds it
                if e.where != hf_name:
                    raise
                raise InputError(ck.where[next(iter(plan.groups[name].values()))], f"{hf_name}: {e.problem}") from None
            if cfg.spec.hf_rope_permuted and name.endswith(("attn.q_proj", "attn.k_proj")):
                heads = cfg.n_heads if name.endswith("q_proj") else cfg.n_kv_heads
                lin.permute_out_rows(qk_permutation(heads, cfg.head_dim))
            linears[name[n:]] = lin
        if self.progress and not prefix:
            self.progress("done", len(todo), len(todo))
        return state, linears

    def _setup_kv_cache(self, model: Decoder, quant: Any, kv_scales: dict[int, dict[str, torch.Tensor]]) -> None:
        o = self.kv_options
        use_fp8 = o.dtype == "fp8_e4m3" or (o.dtype == "auto" and quant.kv_cache is not None)
        if not use_fp8:
            return
        kvq = FP8KVQuant(source=o.scales)
        if o.scales == "checkpoint":
            n = model.cfg.n_layers
            have = [i for i in range(n) if {"k_scale", "v_scale"} <= set(kv_scales.get(i, {}))]
            if len(have) != n:
                raise InputError(
                    self.path,
                    f"--kv-scales checkpoint, but only {len(have)} of {n} layers carry k_scale/v_scale "
                    "(use --kv-scales calibrate or unit)",
                )
            for i in range(n):
                kvq.k_scale[i] = float(kv_scales[i]["k_scale"].reshape(-1)[0])
                kvq.v_scale[i] = float(kv_scales[i]["v_scale"].reshape(-1)[0])
        self.kv_quant = kvq
        model.set_kv_quant(kvq)

    def quant_linears(self) -> Mapping[str, nn.Module]:
        assert self.model is not None
        if self.streaming:  # built layer by layer as the mapping is walked (streaming.py)
            from ..streaming import LazyModules

            return LazyModules(self.model, list(self.linear_names))  # type: ignore[arg-type]
        return {n: _get_module(self.model, n) for n in self.linear_names}


@dataclass
class _Plan:
    """Where each graph tensor of a candidate lives: filled without reading the weights."""

    cfg: Any
    quant: Any
    dense: dict[str, tuple[str, float | None]] = field(default_factory=dict)  # graph name → (key, norm offset)
    groups: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))  # module → suffix → key
    hf_module: dict[str, str] = field(default_factory=dict)
    kv_scales: dict[int, dict[str, torch.Tensor]] = field(default_factory=lambda: defaultdict(dict))
    linears: list[str] = field(default_factory=list)


def _check_layer_count(ck: Checkpoint, n_layers: int) -> None:
    """Tensors for layers config.json does not have are refused: a silently shorter model is a wrong model."""
    beyond: dict[int, str] = {}
    for key in ck.keys():
        li = hf_map.split_layer(key)
        if li is not None and li[0] >= n_layers:
            beyond.setdefault(li[0], key)
    if beyond:
        top = max(beyond)
        raise InputError(
            ck.dir / "config.json",
            f"num_hidden_layers is {n_layers} but {ck.where[beyond[top]].name} holds tensors for layer {top} "
            f"({len(beyond)} layers beyond the config, e.g. {beyond[top]!r})",
        )


def _linear_shape(cfg, name: str) -> tuple[int, int]:
    """(out, in) the config implies for a canonical linear module."""
    d, hd = cfg.d_model, cfg.head_dim
    return {
        "attn.q_proj": (cfg.n_heads * hd, d),
        "attn.k_proj": (cfg.n_kv_heads * hd, d),
        "attn.v_proj": (cfg.n_kv_heads * hd, d),
        "attn.o_proj": (d, cfg.n_heads * hd),
        "mlp.gate_proj": (cfg.d_ff, d),
        "mlp.up_proj": (cfg.d_ff, d),
        "mlp.down_proj": (d, cfg.d_ff),
        "lm_head": (cfg.vocab_size, d),
    }[name.split(".", 2)[-1] if name.startswith("layers.") else name]


def _check_primary_shape(module: str, tensors: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
    """The packed/quantized weight must match config.json before any scale is checked against it."""
    out_f, in_f = shape
    t = tensors.get("weight_packed")
    if t is None and "weight" in tensors and tensors["weight"].dtype == torch.uint8:
        t = tensors["weight"]  # ModelOpt NVFP4 stores packed nibbles under "weight"
    if t is not None:
        want = (out_f, in_f // 2)
        if tuple(t.shape) != want:
            name = "weight_packed" if "weight_packed" in tensors else "weight"
            got = tuple(t.shape)
            raise InputError(module, f"{name} has shape {got}, expected (out, in/2) = {want} from config.json")
    elif "weight" in tensors and tuple(tensors["weight"].shape) != shape:
        got = tuple(tensors["weight"].shape)
        raise InputError(module, f"weight has shape {got}, expected {shape} from config.json")


class _TiedHead(nn.Module):
    """lm_head tied to the (unquantized) embedding, as HF ties them."""

    def __init__(self, embed: nn.Embedding):
        super().__init__()
        self.embed = embed

    @property
    def weight(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.float(), self.embed.weight.float())


def _get_module(root: nn.Module, dotted: str) -> nn.Module:
    m = root
    for part in dotted.split("."):
        m = getattr(m, part) if not part.isdigit() else m[int(part)]  # type: ignore[index]
    return m


def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(_get_module(root, parent) if parent else root, leaf, new)
