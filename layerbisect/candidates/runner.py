"""The candidate runner: a quantized HF checkpoint through the same graph, quantized linears swapped in.

The spec comes from config.json through the family adapter; the graph is built on ``meta``
and walked: every ``nn.Linear`` of it gets the checkpoint tensors of its HF module (found
through ``graph/names.py`` and the family's overrides) and becomes a ``QuantLinear`` (exact
emulation, or native GPU kernels with ``impl="native"``); every other parameter (norms,
embeddings, router biases) is loaded as FP32 with HF's conventions undone (norm offset,
row permutations; see ``spec.py``). A linear whose checkpoint tensor is a plain float
``weight`` with no quantization tensors runs dense whatever the config's targets say (the
producer quantizes ``nn.Linear`` modules only: transformers 5 routers are not ``nn.Linear``).
Norms and scale parameters (Gemma 4's ``layer_scalar``, router ``scale`` and
``per_expert_scale``: the graph's ``scale_params``) the checkpoint lacks are filled with the
identity (1.0) and listed in ``load_notes`` (``missing``, and ``missing_kinds``: name → norm /
scale) — what a lenient engine loader does silently, and what the comparator must then be
able to point at. Any other missing tensor is an ``InputError``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..families import family_of, spec_from_hf
from ..graph import get_module, meta_model, set_module
from ..graph.inventory import linear_modules, params
from ..graph.layer import residual_norms
from ..graph.names import HF_IGNORABLE, KV_SCALES, hf_fused_source, hf_module_name, hf_param_name, strip_hf_prefix
from ..heap import release_free_memory
from ..kv_cache import FP8KVQuant, KVCacheOptions
from ..runner import ModelRunner
from ..spec import ModelSpec
from .checkpoint import Checkpoint
from .qlinear import DenseLinear, QuantOptions, build_linear
from .schemes import DENSE
from .whatif_norms import UnscaledFP8Norm

_QUANT_SUFFIXES = ("weight_packed", "weight_scale", "weight_global_scale", "weight_scale_2", "input_scale",
                   "input_global_scale", "weight_zero_point")


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
        self.load_notes: dict[str, Any] = {"missing": [], "unused": [], "missing_kinds": {}}
        self.linear_names: dict[str, str] = {}  # canonical module name → HF module name
        self.kv_quant: FP8KVQuant | None = None
        self.kv_calibration: Any = None  # kv_calibration.KVCalibration once calibrate_kv ran
        self.checkpoint: Checkpoint | None = None

    def _build(self) -> None:
        plan = self.plan()
        model = meta_model(plan.spec)
        # A tied 16-bit embedding stays 16-bit on the CPU (0.31 of 0.63 GiB for Gemma 3's 262144 x 640): the
        # lookup widens its rows, the head a block of rows at a time (TiedHead); the values are the same.
        keep = frozenset({"embed.weight"}) if plan.spec.tied_embeddings and self.device.type == "cpu" else frozenset()
        state, linears = self.materialize(plan, "", device=self.device, keep_stored=keep)
        for name, lin in linears.items():
            set_module(model, name, lin)
        model.load_state_dict(state, strict=False, assign=True)
        if plan.spec.tied_embeddings:
            model.lm_head = TiedHead(model.embed)
        model = model.to(self.device)
        self.setup_kv_cache(model, plan.quant, plan.kv_scales)
        self.model = model.eval()
        if self.options.compute_dtype != "fp32":  # every op's result rounded to FP16/BF16 (compute_dtype.py)
            from ..compute_dtype import install

            install(self.model, self.options.compute_dtype)
        assert self.checkpoint is not None
        self.tokenizer = self.checkpoint.tokenizer()
        _own_file_tensors(model)
        self.checkpoint.close()  # reopened on demand (the scale audit reads a few small tensors)
        release_free_memory(self.device)  # the read tensors (the BF16 embedding, 0.3 GB) are freed heap memory now

    def plan(self) -> CandidatePlan:
        """Map every checkpoint key to the graph and check completeness; reads only small tensors (KV scales)."""
        ck = self.checkpoint = Checkpoint(self.path)
        spec = spec_from_hf(ck.config, path=str(ck.dir / "config.json"))
        fam = family_of(spec)
        model = meta_model(spec)
        plan = CandidatePlan(spec=spec, quant=ck.quant)
        # checkpoint keys by HF module (prefix stripped) → leaf → key
        by_module: dict[str, dict[str, str]] = defaultdict(dict)
        stripped: dict[str, str] = {}
        for key in ck.keys():
            s = strip_hf_prefix(key)
            stripped[s] = key
            module, _, leaf = s.rpartition(".")
            by_module[module][leaf] = key
        used: set[str] = set()
        for key in ck.keys():  # KV-cache scales: per layer, several spellings
            s = strip_hf_prefix(key)
            if s.startswith("layers."):
                _, i, rest = s.split(".", 2)
                if rest in KV_SCALES and i.isdigit():
                    plan.kv_scales[int(i)][KV_SCALES[rest]] = ck.get(key).float()
                    used.add(key)
        for name in linear_modules(model):
            if name == "lm_head" and spec.tied_embeddings:
                continue
            hf = hf_module_name(name, fam.hf_names)
            group = {k: v for k, v in by_module.get(hf, {}).items() if v not in used} if hf else {}
            if group:
                leaf, key = next(iter(group.items()))
                plan.groups[name] = group
                plan.hf_module[name] = key[: -len(leaf) - 1]  # the checkpoint's own spelling, prefix included
                used |= set(group.values())
            else:
                fused = hf_fused_source(name, fam.hf_fused)
                key = stripped.get(fused[0]) if fused else None
                if key is None:
                    plan.absent.append(name)
                    continue
                plan.fused[name] = (key, *fused[1:])  # type: ignore[assignment]
                plan.hf_module[name] = key
                used.add(key)
            plan.linears.append(name)
        if plan.absent:
            raise InputError(ck.dir, f"no tensors for {len(plan.absent)} linear modules "
                                     f"(e.g. {', '.join(plan.absent[:3])})")
        linear_set = set(plan.linears) | ({"lm_head"} if spec.tied_embeddings else set())
        missing: list[str] = []
        kinds: dict[str, str] = {}
        for p in params(model):
            if p.module in linear_set:
                continue
            hf = hf_param_name(p.name, fam.hf_names)
            key = stripped.get(hf) if hf else None
            if key is None:
                if p.kind in ("norm", "scale"):
                    missing.append(p.name)  # an engine that never maps this tensor runs the identity (1.0)
                    kinds[p.name] = p.kind
                    continue
                raise InputError(ck.dir, f"checkpoint has no tensor for {p.name} (looked for {hf!r})")
            if ck.shape(key) != p.shape:  # the header's shape and dtype against config.json, before any read
                raise InputError(ck.where[key], f"tensor {key!r} has shape {ck.shape(key)}, expected {p.shape} "
                                                "from config.json")
            if ck.dtype(key) not in _DENSE_DTYPES:
                raise InputError(ck.where[key], f"tensor {key!r} has dtype {ck.dtype(key)}; an unquantized "
                                                f"{p.kind} is one of {', '.join(_DENSE_DTYPES)}")
            plan.dense[p.name] = (key, spec.hf_norm_offset if p.kind == "norm" else None)
            used.add(key)
        unused = [k for k in ck.keys() if k not in used and not HF_IGNORABLE.search(strip_hf_prefix(k))]
        beyond = sorted({int(strip_hf_prefix(k).split(".")[1]) for k in unused
                         if strip_hf_prefix(k).startswith("layers.") and strip_hf_prefix(k).split(".")[1].isdigit()
                         and int(strip_hf_prefix(k).split(".")[1]) >= spec.n_layers})
        if beyond:
            raise InputError(ck.dir, f"holds tensors for layer {beyond[-1]} but config.json says "
                                     f"num_hidden_layers = {spec.n_layers}")
        self.load_notes = {"missing": missing, "unused": unused, "missing_kinds": kinds}
        self.linear_names = {n: plan.hf_module[n] for n in plan.linears}
        return plan

    def materialize(self, plan: CandidatePlan, prefix: str, device: torch.device | None = None,
                    keep_stored: frozenset[str] = frozenset()) -> tuple[dict[str, torch.Tensor], dict[str, nn.Module]]:
        """FP32 dense tensors and built QuantLinears of the graph names under ``prefix`` ("" = all), on CPU.

        Names are relative to ``prefix``, so a streamed layer loads them into a ``Layer`` as is. ``device``: the
        dense tensors go there in their stored dtype and become FP32 there (half the bytes of a BF16 embedding
        cross to a GPU, and the widening, exact anywhere, runs on it). ``keep_stored``: graph names kept in
        their stored dtype (a tied BF16 embedding on the CPU: ``TiedHead`` widens it a block at a time).
        """
        ck, spec, n = self.checkpoint, plan.spec, len(prefix)
        assert ck is not None
        fam = family_of(spec)
        shapes = {p.name: p.shape for p in params(meta_model(spec))}
        state: dict[str, torch.Tensor] = {}
        for name, (key, offset) in plan.dense.items():
            if name.startswith(prefix):
                w = ck.get(key).to(device)
                w = w if name in keep_stored and offset is None else w.float()
                state[name[n:]] = w if offset is None else w + offset
        for name in self.load_notes["missing"]:
            if name.startswith(prefix):
                state[name[n:]] = torch.ones(shapes[name])
        linears: dict[str, nn.Module] = {}
        if self.options.norm_act_quant == "unscaled":  # what-if (seed 000): swapped like the linears
            for name in _residual_and_head_norms(spec):
                if name.startswith(prefix) and name != prefix.rstrip("."):
                    linears[name[n:]] = UnscaledFP8Norm(shapes[f"{name}.weight"][0], spec.norm_eps)
        todo = [x for x in plan.linears if x.startswith(prefix)]
        for j, name in enumerate(todo):
            if self.progress and not prefix:
                self.progress(name, j, len(todo))
            hf_name = plan.hf_module[name]
            out_f, in_f = shapes[f"{name}.weight"]
            if name in plan.fused:
                lin: nn.Module = _fused_linear(ck, name, plan.fused[name], (out_f, in_f), self.options)
            else:
                try:
                    tensors = {suffix: ck.get(key) for suffix, key in plan.groups[name].items()}
                    check_primary_shape(hf_name, tensors, (out_f, in_f))
                    scheme = DENSE if _is_plain(tensors) else plan.quant.scheme_for(hf_name)
                    lin = build_linear(hf_name, tensors, scheme, self.options)
                except InputError as e:  # the module's problem, said with the file that holds it
                    if e.where != hf_name:
                        raise
                    raise InputError(ck.where[next(iter(plan.groups[name].values()))],
                                     f"{hf_name}: {e.problem}") from None
            perm = fam.hf_row_permutation(name, spec)
            if perm is not None:
                lin.permute_out_rows(perm)  # type: ignore[operator]
            linears[name[n:]] = lin
        if self.progress and not prefix:
            self.progress("done", len(todo), len(todo))
        return state, linears

    def setup_kv_cache(self, model: Any, quant: Any, kv_scales: dict[int, dict[str, torch.Tensor]]) -> None:
        o = self.kv_options
        use_fp8 = o.dtype == "fp8_e4m3" or (o.dtype == "auto" and quant.kv_cache is not None)
        if not use_fp8:
            return
        kvq = FP8KVQuant(source=o.scales)
        if o.scales == "checkpoint":
            spec = model.cfg
            want = [ls.index for ls in spec.layers if ls.mixer.kind == "attention" and ls.mixer.kv_source is None]
            have = [i for i in want if {"k_scale", "v_scale"} <= set(kv_scales.get(i, {}))]
            if len(have) != len(want):
                raise InputError(
                    self.path,
                    f"--kv-scales checkpoint, but only {len(have)} of {len(want)} attention layers carry "
                    "k_scale/v_scale (use --kv-scales calibrate or unit)",
                )
            for i in want:
                kvq.k_scale[i] = float(kv_scales[i]["k_scale"].reshape(-1)[0])
                kvq.v_scale[i] = float(kv_scales[i]["v_scale"].reshape(-1)[0])
        self.kv_quant = kvq
        model.set_kv_quant(kvq)

    def calibrate_kv(self, prompt_ids: list[int]) -> Any:
        """With calibrated KV scales: run the chosen calibration pass now (``kv_calibration.py``) and freeze them.

        Returns the ``KVCalibration`` record, or None when the KV scales are not calibrated.
        """
        if self.kv_quant is None or self.kv_quant.source != "calibrate" or self.kv_quant.k_scale:
            return self.kv_calibration
        from ..kv_calibration import calibrate

        self.activate()
        self.kv_calibration = calibrate(self.model, self.kv_quant, prompt_ids, self.kv_options.calibration,
                                        self.kv_options.calibration_seed)
        return self.kv_calibration

    def quant_linears(self) -> Mapping[str, nn.Module]:
        assert self.model is not None
        if self.streaming:  # built layer by layer as the mapping is walked (streaming.py)
            from ..streaming import LazyModules

            return LazyModules(self.model, list(self.linear_names))  # type: ignore[arg-type]
        return {n: get_module(self.model, n) for n in self.linear_names}


def _residual_and_head_norms(spec: ModelSpec) -> list[str]:
    """Canonical names of the norms that write the residual stream, and the final norm."""
    return [f"layers.{ls.index}.{n}" for ls in spec.layers for n in residual_norms(ls)] + ["final_norm"]


@dataclass
class CandidatePlan:
    """Where each graph tensor of a candidate lives: filled without reading the weights."""

    spec: ModelSpec
    quant: Any
    dense: dict[str, tuple[str, float | None]] = field(default_factory=dict)  # graph name → (key, norm offset)
    groups: dict[str, dict[str, str]] = field(default_factory=dict)  # linear module → leaf → key
    fused: dict[str, tuple[str, int | None, int, int]] = field(default_factory=dict)  # module → (key, e, part, n)
    hf_module: dict[str, str] = field(default_factory=dict)
    kv_scales: dict[int, dict[str, torch.Tensor]] = field(default_factory=lambda: defaultdict(dict))
    linears: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    @property
    def cfg(self) -> ModelSpec:
        return self.spec


_DENSE_DTYPES = ("F32", "BF16", "F16", "F64")  # norms and embeddings: never integer, never FP8


def _is_plain(tensors: dict[str, torch.Tensor]) -> bool:
    """A float weight with no quantization tensors: an unquantized module whatever the config's targets say."""
    w = tensors.get("weight")
    return (w is not None and w.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and not any(s in tensors for s in _QUANT_SUFFIXES))


def _fused_linear(ck: Checkpoint, name: str, src: tuple[str, int | None, int, int], shape: tuple[int, int],
                  options: QuantOptions) -> nn.Module:
    """A dense linear cut from a fused HF tensor (transformers 5's ``experts.gate_up_proj`` layout)."""
    key, expert, part, parts = src
    t = ck.get(key)
    if expert is not None:
        if t.ndim != 3 or expert >= t.shape[0]:
            raise InputError(key, f"fused expert tensor has shape {tuple(t.shape)}: no expert {expert}")
        t = t[expert]
    rows = t.shape[0] // parts
    w = t[part * rows:(part + 1) * rows]
    if tuple(w.shape) != shape:
        raise InputError(key, f"part {part} of {parts} has shape {tuple(w.shape)}, expected {shape} for {name}")
    return DenseLinear(key, w.contiguous(), DENSE, options, None)


def check_primary_shape(module: str, tensors: dict[str, torch.Tensor], shape: tuple[int, int]) -> None:
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


def _own_file_tensors(model: nn.Module) -> None:
    """Copy the CPU tensors that still view a checkpoint file's mapping into memory of their own.

    safetensors hands out tensors over a private mapping of the file (storages that cannot be
    resized); while one of them lives, the pages of the file read so far stay in this process's
    RSS (the BF16 embedding read once to convert it: with the open handles, 0.32 GB for Gemma 3
    270M, measured). Copying the views left (the quantized weights) and closing the files lets the
    mapping go. Same bits.
    """
    copies: dict[int, torch.Tensor] = {}  # a tensor shared by two modules stays shared
    for mod in model.modules():
        for table in (mod._parameters, mod._buffers):
            for k, t in table.items():
                if t is None or t.device.type != "cpu" or t.untyped_storage().resizable():
                    continue  # on a device, or already memory of its own
                if id(t) not in copies:
                    c = t.detach().clone()
                    is_param = isinstance(t, nn.Parameter)
                    copies[id(t)] = nn.Parameter(c, requires_grad=t.requires_grad) if is_param else c
                table[k] = copies[id(t)]


class TiedHead(nn.Module):
    """lm_head tied to the (unquantized) embedding, as HF ties them.

    x (..., d) → FP32 logits (..., V). An FP32 embedding is one ``linear``; a 16-bit one (kept so on the CPU)
    is widened ``BLOCK_BYTES`` of FP32 rows at a time into one reused buffer, each block's logits computed in
    FP32 from the widened rows: the values of ``linear(x, weight.float())`` (bf16/fp16 → fp32 is exact; each
    logit is the same FP32 dot product over d), without a whole FP32 copy of the table per call.
    """

    BLOCK_BYTES = 8 << 20

    def __init__(self, embed: nn.Embedding):
        super().__init__()
        self.embed = embed

    @property
    def weight(self) -> torch.Tensor:
        return self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, x = self.embed.weight, x.float()
        if w.dtype == torch.float32:
            return torch.nn.functional.linear(x, w)
        V, d = w.shape
        step = max(1, min(V, self.BLOCK_BYTES // (4 * d)))
        flat = x.reshape(-1, d)
        out = torch.empty(flat.shape[0], V, dtype=torch.float32, device=x.device)
        buf = torch.empty(step, d, dtype=torch.float32, device=x.device)
        for lo in range(0, V, step):
            hi = min(V, lo + step)
            blk = buf[: hi - lo]
            blk.copy_(w[lo:hi])
            out[:, lo:hi] = torch.nn.functional.linear(flat, blk)
        return out.reshape(*x.shape[:-1], V)


__all__ = ["CandidatePlan", "CandidateRunner", "TiedHead", "check_primary_shape"]
