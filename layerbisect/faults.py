"""Fault injection: broken candidates derived from correct ones made by the real producer.

Design notes
- A fault case starts from a checkpoint that llmcompressor wrote (``quantize_checkpoint``) and
  edits a *copy* with safetensors' own API (``load_file``/``save_file``, metadata kept) and
  plain JSON for config.json. We never write a quantized format by hand: the clean checkpoint
  is someone else's reading of the format, the edit is the one bug we plant.
- Each planted bug mirrors a real one (docs/FAULTS.md names the seed):
    double_scale_norms      seed 000: absorbed scales applied again; residual norms blow up, the
                            final logits pin at the softcap (Gemma 2, FP8_BLOCK)
    input_scale_overflow    seed 002: an NVFP4 static ``input_global_scale`` far too large for the
                            activations; block scales overflow FP8; NaN from layer 0 in a kernel
                            that casts without saturating (``non_saturating_block_scales``)
    kv_scales_garbage       seed 003: FP8 KV-cache scales calibrated on garbage (far too small)
    dropped_norms           seed 004: a loader that drops a norm tensor in every layer
    g4_*                    seeds 000 and 004 on tiny Gemma 4 (GEMMA4_CASES): the norm-output what-if and
                            planted norm gains (000); base FFN norms, layer scalars, router scales dropped,
                            and an engine dump with global-layer buffers sized for the sliding head_dim (004)
    global_scale_inverted   NVFP4 ``weight_global_scale`` stored as its reciprocal (multiplier vs divisor)
    nibble_swap             FP4 nibbles swapped in ``weight_packed`` (element 0 in the high nibble)
    kv_calibration_garbage_state
                            seed 003 itself (vLLM 37554): hybrid Qwen3.5, FP8 KV-cache scales calibrated on
                            a first pass whose recurrent layers ran from uninitialized state, frozen, then
                            the real prompt (``--kv-calibration garbage-state``)
    fused_shard_scale       vLLM 38197: an engine that fuses the DeltaNet's ``in_proj_qkv`` with other
                            projections applies its per-tensor FP8 scale to the first shard (q) only
- Engine faults (how a kernel behaves, not what the checkpoint holds) are context managers
  that patch our emulation for the duration of a run: ``non_saturating_block_scales``,
  ``first_shard_scale_only``. Engine *settings* are compare options (``FaultCase.compare_kw``):
  the seed-003 case is a clean checkpoint run with ``--kv-scales calibrate --kv-calibration
  garbage-state``.
- ``python -m layerbisect.faults --write-docs docs/FAULTS.md`` builds every case on tiny models,
  runs ``compare`` (and ``audit``) and writes the diagnoses into the doc.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import InputError
from .kv_cache import KVCacheOptions

TensorEdit = Callable[[str, torch.Tensor], "torch.Tensor | None"]  # None drops the tensor


# ---------------------------------------------------------------------------------------------------------------
# primitives: copy, edit tensors, edit config
# ---------------------------------------------------------------------------------------------------------------


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise InputError(src, "not a checkpoint directory: no config.json")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def edit_tensors(ckpt: str | Path, edit: TensorEdit, extra: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Rewrite every safetensors file of ``ckpt`` through ``edit``; returns the names changed or dropped."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    ckpt = Path(ckpt)
    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise InputError(ckpt, "no *.safetensors files")
    changed: list[str] = []
    weight_map: dict[str, str] = {}
    for n, p in enumerate(files):
        with safe_open(p, "pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        out: dict[str, torch.Tensor] = {}
        for k, t in tensors.items():
            new = edit(k, t)
            if new is None:
                changed.append(k)
                continue
            if new is not t:
                changed.append(k)
            out[k] = new.contiguous()
        if n == 0 and extra:
            out.update({k: v.contiguous() for k, v in extra.items()})
            changed += list(extra)
        save_file(out, str(p), metadata=meta)
        weight_map.update({k: p.name for k in out})
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = weight_map
        index.write_text(json.dumps(data, indent=2))
    return changed


def edit_config(ckpt: str | Path, edit: Callable[[dict[str, Any]], None]) -> None:
    p = Path(ckpt) / "config.json"
    cfg = json.loads(p.read_text())
    edit(cfg)
    p.write_text(json.dumps(cfg, indent=2))


def _layer_of(name: str) -> int | None:
    parts = name.split(".")
    for a, b in zip(parts, parts[1:], strict=False):
        if a == "layers" and b.isdigit():
            return int(b)
    return None


# ---------------------------------------------------------------------------------------------------------------
# checkpoint faults
# ---------------------------------------------------------------------------------------------------------------


def double_scale_norms(src: str | Path, dst: str | Path, factor: float = 8.0) -> Path:
    """Seed 000: a scale already absorbed into the residual-writing norm gains is applied again.

    Gemma 2/3 store ``w`` and use ``1 + w`` (Gemma 4 stores the gain itself: the family's
    ``hf_norm_offset`` says which); the effective gain becomes ``factor`` × itself on the
    post-attention and post-feedforward norms of every layer and on the final norm. Each layer
    then writes ``factor``× too much into the residual (norm blow-up) and the final logits are
    ``factor``× too large (softcap saturation).
    """
    out = copy_checkpoint(src, dst)
    offset = _norm_offset(out)  # Gemma 2/3 store w for 1 + w; Gemma 4 (and llama) store the gain itself
    targets = ("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if k.endswith(targets) or k.endswith("model.norm.weight") or k == "norm.weight":
            return ((t.float() + offset) * factor - offset).to(t.dtype)
        return t

    _require(edit_tensors(out, edit), out, "norm tensors to rescale")
    return out


def input_scale_overflow(src: str | Path, dst: str | Path, layer: int = 0, factor: float = 1000.0) -> Path:
    """Seed 002: layer ``layer``'s NVFP4 ``input_global_scale`` (a divisor, 448·6/amax) ``factor``× too large.

    The activations then need block scales ``factor``× beyond E4M3's 448: the producer saturates
    (values clip to ±6·448/gs); a kernel that casts without saturating makes NaN.
    """
    out = copy_checkpoint(src, dst)

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if k.endswith(".input_global_scale") and _layer_of(k) == layer:
            return t * factor
        return t

    _require(edit_tensors(out, edit), out, f"input_global_scale tensors in layer {layer}")
    return out


def kv_scales_garbage(
    src: str | Path, dst: str | Path, prompt_ids: list[int], layer: int = 1, shrink: float = 200.0
) -> Path:
    """Seed 003: an FP8 KV-cache checkpoint whose ``layer`` scales were calibrated on garbage.

    Correct per-layer ``k_scale``/``v_scale`` (amax/448 on ``prompt_ids``, as engines calibrate)
    are written for every layer, with ``kv_cache_scheme`` in the config (llmcompressor's FP8 KV
    layout: ``self_attn.k_scale``); layer ``layer``'s are ``shrink``× too small, as if calibrated
    on near-zero activations. Keys and values of that layer saturate in the cache.
    """
    from .candidates.runner import CandidateRunner
    from .kv_cache import KVCacheOptions

    out = copy_checkpoint(src, dst)
    runner = CandidateRunner(out, kv_cache=KVCacheOptions(dtype="fp8_e4m3", scales="calibrate")).activate()
    runner.run(prompt_ids, select=[])
    kvq = runner.kv_quant
    assert kvq is not None
    prefix = _layer_prefix(out)
    extra: dict[str, torch.Tensor] = {}
    for i in range(runner.config.n_layers):
        f = 1.0 / shrink if i == layer else 1.0
        extra[f"{prefix}{i}.self_attn.k_scale"] = torch.tensor([kvq.k_scale[i] * f], dtype=torch.float32)
        extra[f"{prefix}{i}.self_attn.v_scale"] = torch.tensor([kvq.v_scale[i] * f], dtype=torch.float32)
    edit_tensors(out, lambda k, t: t, extra=extra)

    def cfg_edit(cfg: dict[str, Any]) -> None:
        cfg["quantization_config"]["kv_cache_scheme"] = {
            "type": "float", "num_bits": 8, "strategy": "tensor", "dynamic": False, "symmetric": True,
        }

    edit_config(out, cfg_edit)
    return out


def dropped_norms(src: str | Path, dst: str | Path, norm: str = "pre_feedforward_layernorm") -> Path:
    """Seed 004: the ``norm`` weight is missing in every layer (a loader that never maps it)."""
    out = copy_checkpoint(src, dst)
    _require(edit_tensors(out, lambda k, t: None if k.endswith(f".{norm}.weight") else t), out, f"{norm} tensors")
    return out


def global_scale_inverted(src: str | Path, dst: str | Path, module: str = "layers.1.mlp.gate_proj") -> Path:
    """NVFP4 ``weight_global_scale`` of ``module`` stored as its reciprocal (a multiplier where a divisor belongs)."""
    out = copy_checkpoint(src, dst)

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if k.endswith(f"{module}.weight_global_scale"):
            return 1.0 / t
        return t

    _require(edit_tensors(out, edit), out, f"{module}.weight_global_scale")
    return out


def expert_weight_scale(src: str | Path, dst: str | Path, module: str = "layers.1.mlp.experts.5.down_proj",
                        factor: float = 4.0) -> Path:
    """One routed expert's ``weight_scale`` × ``factor`` in one layer (an expert loaded with a sibling's scale)."""
    out = copy_checkpoint(src, dst)

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        return t * factor if k.endswith(f"{module}.weight_scale") else t

    _require(edit_tensors(out, edit), out, f"{module}.weight_scale")
    return out


def swap_nibbles(src: str | Path, dst: str | Path, layer: int = 1) -> Path:
    """FP4 codes of every linear in ``layer`` packed with element 0 in the *high* nibble."""
    out = copy_checkpoint(src, dst)

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if k.endswith(".weight_packed") and _layer_of(k) == layer:
            return (t >> 4) | ((t & 0x0F) << 4)
        return t

    _require(edit_tensors(out, edit), out, f"weight_packed tensors in layer {layer}")
    return out


def drop_tensors(src: str | Path, dst: str | Path, suffixes: tuple[str, ...], what: str) -> Path:
    """Seed 004 (Gemma 4): tensors ending in any of ``suffixes`` missing in every layer (a loader that never
    emits them): the base pre/post feed-forward norms, ``layer_scalar``, ``router.scale`` and
    ``router.per_expert_scale``. A lenient engine then runs each as the identity (1.0)."""
    out = copy_checkpoint(src, dst)
    _require(edit_tensors(out, lambda k, t: None if k.endswith(suffixes) else t), out, what)
    return out


def global_head_dim_dump(hf_dir: str | Path, dst: str | Path, prompt_ids: list[int]) -> Path:
    """Seed 004's engine bug, captured: transformers' Gemma 4 with global-layer attention buffers sized
    for the sliding head_dim, run on ``prompt_ids`` and dumped through the capture API.

    The seed's engine sized its attention workspace from the config's scalar head_dim (the
    sliding layers' 256) while the global layers' projections are 512 per head wide: each token
    row written at stride ``heads · hd_swa`` overflows into the next token's row, which that token
    then overwrites (``gemma4_workspace_bug``). Returns the dump directory
    (``bisect compare REF.gguf --candidate-dump DIR``).
    """
    from transformers import AutoModelForCausalLM

    from .engines import capture_activations

    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    out = Path(dst)
    if out.exists():
        shutil.rmtree(out)
    with torch.no_grad(), gemma4_workspace_bug(model), capture_activations(model, out, token_ids=prompt_ids):
        model(torch.tensor([prompt_ids]))
    return out


def _require(changed: list[str], where: Path, what: str) -> None:
    if not changed:
        raise InputError(where, f"fault injection found no {what} to edit")


def _norm_offset(ckpt: Path) -> float:
    """What the checkpoint's family adds to a stored norm weight (``ModelSpec.hf_norm_offset``)."""
    from .families import spec_from_hf

    return spec_from_hf(json.loads((ckpt / "config.json").read_text()), ckpt / "config.json").hf_norm_offset


def _layer_prefix(ckpt: Path) -> str:
    from safetensors import safe_open

    for p in sorted(ckpt.glob("*.safetensors")):
        with safe_open(p, "pt") as f:
            for k in f.keys():
                i = k.find("layers.")
                if i >= 0:
                    return k[: i + len("layers.")]
    raise InputError(ckpt, "no layer tensors")


# ---------------------------------------------------------------------------------------------------------------
# engine faults
# ---------------------------------------------------------------------------------------------------------------


def _cast_no_saturation(x: torch.Tensor) -> torch.Tensor:
    # E4M3FN has no infinity: an unsaturated cast of anything past the largest finite value
    # (448, rounding boundary 464) is NaN, as in CUDA's __nv_cvt_float_to_fp8 with __NV_NOSAT.
    over = x.abs() >= 464.0
    return torch.where(over, torch.full_like(x, float("nan")), x).to(torch.float8_e4m3fn)


def _overflowing_rows(y: torch.Tensor, stride: int) -> torch.Tensor:
    """Rows of width W written one after another at ``stride`` < W into one flat buffer, then read back.

    Token t's row keeps its first ``stride`` values; the rest is the next token's first values
    (it was written later, over them); the last token's row is intact. (..., T, W) → same shape.
    """
    T, W = y.shape[-2], y.shape[-1]
    flat = torch.zeros(*y.shape[:-2], (T - 1) * stride + W, dtype=y.dtype, device=y.device)
    for t in range(T):  # in token order, as the kernel writes them
        flat[..., t * stride : t * stride + W] = y[..., t, :]
    return torch.stack([flat[..., t * stride : t * stride + W] for t in range(T)], dim=-2)


@contextlib.contextmanager
def gemma4_workspace_bug(model: torch.nn.Module) -> Iterator[None]:
    """Engine fault (seed 004) on a transformers Gemma 4: global-layer q/k/v written into a workspace whose row
    stride is sized with the sliding layers' head_dim.

    Every attention layer whose projection is wider than ``heads · head_dim`` of the config (the
    sliding head_dim; global layers have ``per_layer_config`` head_dim) gets a forward hook on
    its q/k/v projections that passes the output through ``_overflowing_rows``. Sliding layers
    and single-token decode steps are untouched, as in the seed (the overflow needs two rows).
    """
    cfg = model.config.get_text_config()
    layers = model.model.layers
    # transformers refuses cfg.head_dim for heterogeneous configs: the sliding layers' is the engine's scalar
    hd_swa = next(int(ly.self_attn.head_dim) for ly in layers if ly.self_attn.is_sliding)
    handles = []
    for layer in layers:
        attn = layer.self_attn
        for proj, heads in (("q_proj", cfg.num_attention_heads), ("k_proj", None), ("v_proj", None)):
            lin = getattr(attn, proj, None)
            if lin is None:
                continue
            if heads is None:  # kv heads of this layer: the projection's width over its head_dim
                heads = lin.out_features // attn.head_dim
            stride = heads * hd_swa
            if lin.out_features > stride:
                handles.append(lin.register_forward_hook(
                    lambda _m, _a, y, stride=stride: _overflowing_rows(y, stride)))
    if not handles:
        raise InputError("gemma4_workspace_bug", "no attention projection is wider than the sliding head_dim allows")
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def non_saturating_block_scales() -> Iterator[None]:
    """Engine fault: NVFP4 activation block scales cast to E4M3 without saturation (overflow → NaN).

    What FlashInfer's CUTLASS NVFP4 path does with a static global scale that is too large
    (seed 002); our emulation, like the producer, saturates instead.
    """
    from .kernels import nvfp4 as knv

    saved = knv.cast_to_fp8
    knv.cast_to_fp8 = _cast_no_saturation
    try:
        yield
    finally:
        knv.cast_to_fp8 = saved


@contextlib.contextmanager
def first_shard_scale_only(layers: tuple[int, ...] | None = None, other_scale: float = 1.0) -> Iterator[list[str]]:
    """Engine fault (vLLM 38197): a fused projection's per-tensor FP8 weight scale lands in its first shard only.

    vLLM merges the DeltaNet's ``in_proj_qkv`` (one checkpoint tensor, one ``weight_scale``) and
    ``in_proj_z`` into ``in_proj_qkvz``; its loader wrote the qkv scale into shard 0 (q) and left
    the k and v shards at their initial value. Here every FP8 per-tensor linear with shards
    (``graph.inventory.linear_shards``) in ``layers`` (None: all) keeps its scale on the first
    shard's rows and dequantizes the other rows with ``other_scale`` (1.0, an unloaded scale
    parameter's value here; vLLM's starts at float32 min and its requantization turns it into
    saturated garbage). Yields the list of modules it changed (filled as runners load).
    """
    from .candidates import runner as cr
    from .candidates.qlinear import FP8Linear
    from .graph.inventory import linear_shards

    saved = cr.CandidateRunner.materialize
    changed: list[str] = []

    def materialize(self: Any, plan: Any, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        state, linears = saved(self, plan, prefix)
        shards = linear_shards(plan.spec)
        for rel, lin in linears.items():
            name = prefix + rel
            layer = _layer_of(name)
            if name not in shards or not isinstance(lin, FP8Linear) or lin.scheme.weight != "fp8_tensor":
                continue
            if layers is not None and layer not in layers:
                continue
            per_row = torch.full((lin.out_features, 1), float(other_scale))
            per_row[: shards[name][0][2]] = float(lin.weight_scale)
            lin.weight_scale, lin.w_block, lin._w_dq = per_row, (1, None), None
            changed.append(name)
        return state, linears

    cr.CandidateRunner.materialize = materialize  # type: ignore[method-assign]
    try:
        yield changed
    finally:
        cr.CandidateRunner.materialize = saved  # type: ignore[method-assign]


def vllm_38197_in_layer_1() -> contextlib.AbstractContextManager[list[str]]:
    """``first_shard_scale_only`` planted in layer 1's ``in_proj_qkv`` of the tiny Qwen3.5 (the fault suite's case)."""
    return first_shard_scale_only(layers=(1,))


# ---------------------------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultCase:
    name: str
    seed: str
    arch: str  # a tiny architecture (producers/tiny.py) or "gemma4-<variant>" (producers/tiny_gemma4.py)
    scheme: str
    summary: str
    expect_cause: str
    expect_layer: int | None
    expect_op: str | None  # an op name the diagnosis must mention (prefix match)
    engine: Callable[[], contextlib.AbstractContextManager[None]] | None = None
    compare_kw: dict[str, Any] = field(default_factory=dict)
    dump: bool = False  # the candidate is an engine dump (captured activations), not a checkpoint


def _unscaled_norms() -> dict[str, Any]:
    from .candidates.qlinear import QuantOptions

    return {"quant_options": QuantOptions(norm_act_quant="unscaled")}


# Seeds 000 and 004 on tiny Gemma 4 (producers/tiny_gemma4.py: GGUF by llama.cpp's converter,
# candidates by llmcompressor).
GEMMA4_CASES: tuple[FaultCase, ...] = (
    FaultCase("g4_norm_act_unscaled", "000", "gemma4-dense", "FP8_BLOCK",
              "what-if --norm-act-quant unscaled: residual-writing and final norm outputs FP8-quantized per token, "
              "scale dropped as if absorbed (checkpoint untouched)",
              "double_scale", 0, "attn.post_norm", compare_kw=_unscaled_norms()),
    FaultCase("g4_double_scale_norms", "000", "gemma4-dense", "FP8_BLOCK",
              "absorbed scale applied again to the residual-writing and final norm gains (x8), planted",
              "double_scale", 0, "attn.post_norm"),
    FaultCase("g4_dropped_ffn_norms", "004", "gemma4-moe", "NVFP4",
              "base pre_feedforward_layernorm and post_feedforward_layernorm missing in every layer",
              "missing_norm", 0, "mlp_norm", compare_kw={"generate": 0}),
    FaultCase("g4_missing_layer_scalars", "004", "gemma4-moe", "NVFP4",
              "layer_scalar missing in every layer (run as 1.0)",
              "missing_scale", 0, "layer_scalar", compare_kw={"generate": 0}),
    FaultCase("g4_missing_router_scales", "004", "gemma4-moe", "NVFP4",
              "router.scale and router.per_expert_scale missing in every layer (run as 1.0)",
              "missing_scale", 0, "mlp.router_scale", compare_kw={"generate": 0}),
    FaultCase("g4_global_head_dim_dump", "004", "gemma4-moe", "-",
              "engine dump: transformers with global-layer q/k/v buffers sized for the sliding head_dim",
              "attention_geometry", 5, "attn.v", dump=True),
)


CASES: dict[str, FaultCase] = {
    c.name: c
    for c in (
        FaultCase("double_scale_norms", "000", "gemma2", "FP8_BLOCK",
                  "absorbed scales applied again to the residual-writing norm gains (x8)",
                  "double_scale", 0, "attn.post_norm"),
        FaultCase("input_scale_overflow", "002", "gemma2", "NVFP4",
                  "layer 0 NVFP4 input_global_scale 1000x too large; non-saturating block-scale cast",
                  "act_scale_overflow", 0, "attn.q", engine=non_saturating_block_scales),
        FaultCase("kv_scales_garbage", "003", "gemma2", "FP8",
                  "FP8 KV-cache k_scale/v_scale of layer 1 calibrated on garbage (200x too small)",
                  "kv_cache_scale", 1, "attn.k"),
        FaultCase("dropped_norms", "004", "gemma2", "FP8_DYNAMIC",
                  "pre_feedforward_layernorm dropped in every layer",
                  "missing_norm", 0, "mlp_norm"),
        FaultCase("global_scale_inverted", "-", "llama", "NVFP4A16",
                  "layers.1.mlp.gate_proj weight_global_scale stored as its reciprocal",
                  "scale_inverted", 1, "mlp.gate"),
        FaultCase("nibble_swap", "-", "llama", "NVFP4A16",
                  "FP4 nibble order swapped in every weight_packed of layer 1",
                  "nibble_order", 1, None),
        FaultCase("expert_weight_scale", "-", "qwen3moe", "FP8_DYNAMIC",
                  "the weight_scale of routed expert 5's down_proj in layer 1 multiplied by 4",
                  "scale_mismatch", 1, "mlp.experts.5.down"),
        *GEMMA4_CASES,
        FaultCase("kv_calibration_garbage_state", "003", "qwen35", "FP8_DYNAMIC",
                  "FP8 KV cache, scales calibrated on a first pass whose recurrent layers started from "
                  "uninitialized state (--kv-scales calibrate --kv-calibration garbage-state), frozen, "
                  "then the prompt",
                  "kv_calibration", 3, "attn.k",
                  compare_kw={"kv_cache": KVCacheOptions(dtype="fp8_e4m3", scales="calibrate",
                                                         calibration="garbage-state")}),
        FaultCase("fused_shard_scale", "vLLM 38197", "qwen35", "FP8",
                  "in_proj_qkv's per-tensor FP8 weight scale applied to its first shard (q) only in layer 1",
                  "shard_scale", 1, "attn.in_proj_qkv", engine=vllm_38197_in_layer_1),
    )
}


def build_case(name: str, clean: Path, out: Path, prompt_ids: list[int]) -> Path:
    """The broken checkpoint of case ``name``, derived from the producer's ``clean`` checkpoint."""
    if name == "double_scale_norms":
        return double_scale_norms(clean, out)
    if name == "input_scale_overflow":
        return input_scale_overflow(clean, out)
    if name == "kv_scales_garbage":
        return kv_scales_garbage(clean, out, prompt_ids)
    if name == "dropped_norms":
        return dropped_norms(clean, out)
    if name == "global_scale_inverted":
        return global_scale_inverted(clean, out)
    if name == "nibble_swap":
        return swap_nibbles(clean, out)
    if name == "expert_weight_scale":
        return expert_weight_scale(clean, out)
    if name == "g4_norm_act_unscaled":
        return clean  # the checkpoint is correct: the engine (what-if switch) is not
    if name == "g4_double_scale_norms":
        return double_scale_norms(clean, out)
    if name == "g4_dropped_ffn_norms":
        return drop_tensors(clean, out, (".pre_feedforward_layernorm.weight", ".post_feedforward_layernorm.weight"),
                            "base feed-forward norms")
    if name == "g4_missing_layer_scalars":
        return drop_tensors(clean, out, (".layer_scalar",), "layer_scalar tensors")
    if name == "g4_missing_router_scales":
        return drop_tensors(clean, out, (".router.scale", ".router.per_expert_scale"), "router scales")
    if name == "g4_global_head_dim_dump":
        return global_head_dim_dump(clean, out, prompt_ids)
    if name in ("kv_calibration_garbage_state", "fused_shard_scale"):
        return clean  # the checkpoint is right: the engine's calibration pass / its loader is not
    raise InputError("fault", f"unknown fault case {name!r}; choose one of {', '.join(CASES)}")


PROMPT = "The capital of France is Paris, and the capital of Italy is"


QWEN35_FAULT_LAYERS = ["full_attention", "linear_attention", "linear_attention", "full_attention", "linear_attention",
                      "full_attention"]  # an attention layer before any recurrent one (its calibration stays clean)


def tiny_sources(root: Path, archs: tuple[str, ...] = ("gemma2", "llama")) -> dict[str, dict[str, Path]]:
    """arch → {"hf": BF16 tiny HF dir, "gguf": F32 GGUF of the same weights by llama.cpp's own converter}.

    The tiny archs of ``producers/tiny.py`` get the real llama.cpp vocabulary of their family
    (``vocabulary="auto"``); the GGUF is ``convert_hf_to_gguf.py --outtype f32`` (cached by content).
    "qwen35": the tiny Qwen3.5 (``make_tiny_qwen35``, layers ``QWEN35_FAULT_LAYERS``, real qwen35
    vocabulary) converted by llama.cpp's own ``convert_hf_to_gguf.py --no-mtp`` (both cached).
    """
    from .producers.llamacpp import converted_gguf
    from .producers.tiny import make_tiny_hf

    out: dict[str, dict[str, Path]] = {}
    for arch in archs:
        if arch.startswith("gemma4-"):  # real vocabulary + llama.cpp's converter, cached across sessions
            from .producers.tiny_gemma4 import tiny_gemma4

            out[arch] = tiny_gemma4(arch.removeprefix("gemma4-"))
            continue
        if arch == "qwen35":
            from .producers.tiny import cached_tiny_qwen35

            hf = cached_tiny_qwen35("dense", dtype="bfloat16", layer_types=QWEN35_FAULT_LAYERS)
            out[arch] = {"hf": hf, "gguf": converted_gguf(hf, outtype="f32", extra_args=("--no-mtp",))}
            continue
        hf = root / f"{arch}-hf"
        if not (hf / "config.json").is_file():
            make_tiny_hf(arch, hf, dtype="bfloat16", hidden=64 if arch == "qwen3moe" else None, vocabulary="auto")
        out[arch] = {"hf": hf, "gguf": converted_gguf(hf, outtype="f32")}
    return out


def clean_candidate(root: Path, src: dict[str, Path], arch: str, scheme: str) -> Path:
    from .producers.quantize import quantize_checkpoint

    # Cached by content (the tiny sources are seeded, so a warm cache skips llmcompressor);
    # MoE routers stay unquantized, as every published MoE recipe keeps them ("re:.*mlp.gate$").
    ignore = ("lm_head", "re:.*mlp.gate$") if arch == "qwen3moe" else ("lm_head",)
    return quantize_checkpoint(src["hf"], scheme, None, ignore=ignore)


def prompt_ids_for(hf_dir: Path) -> list[int]:
    from .candidates.checkpoint import Checkpoint

    return list(Checkpoint(hf_dir).tokenizer().encode(PROMPT))


def run_case(name: str, root: Path, *, audit: bool = True) -> dict[str, Any]:
    """Build case ``name`` under ``root`` and diagnose it: compare (+ audit); returns report and audit."""
    from .pipeline import CompareOptions, compare

    case = CASES[name]
    srcs = tiny_sources(root, (case.arch,))
    if case.dump:  # an engine run on the unquantized weights, captured
        ids = prompt_ids_for(srcs[case.arch]["hf"])
        dump = build_case(name, srcs[case.arch]["hf"], root / f"fault-{name}", ids)
        report = compare(srcs[case.arch]["gguf"], candidate_dump=dump,
                         options=CompareOptions(prompt=None, tokens=ids, generate=0, **case.compare_kw))
        return {"case": case, "report": report, "broken": dump, "ref": srcs[case.arch]["gguf"], "audit": None}
    clean = clean_candidate(root, srcs[case.arch], case.arch, case.scheme)
    ids = prompt_ids_for(clean)
    broken = build_case(name, clean, root / f"fault-{name}", ids)
    opts = CompareOptions(prompt=None, tokens=ids, **{"generate": 4, **case.compare_kw})
    ctx = case.engine() if case.engine else contextlib.nullcontext()
    with ctx:
        report = compare(srcs[case.arch]["gguf"], broken, options=opts)
    result: dict[str, Any] = {"case": case, "report": report, "broken": broken, "ref": srcs[case.arch]["gguf"]}
    if audit:
        from .api import audit_weights

        result["audit"] = audit_weights(srcs[case.arch]["gguf"], broken)
    return result


def diagnosis_text(report: Any, n: int = 4) -> str:
    lines = []
    for f in report.findings[:n]:
        lines.append(f"[{f.severity}] {f.kind}: {f.title}")
        if f.detail:
            lines.append(f"    {f.detail}")
    return "\n".join(lines)


def write_docs(path: Path, root: Path) -> None:
    """Regenerate docs/FAULTS.md from real runs of every case."""
    parts = [_DOC_HEAD]
    for name, case in CASES.items():
        res = run_case(name, root)
        aud = res["audit"]
        where = (f"Tiny {case.arch}, engine dump" if case.dump
                 else f"Tiny {case.arch}, producer scheme {case.scheme}")
        parts.append(
            f"## {name} (seed {case.seed})\n\n{case.summary}. {where}"
            + (f"; engine fault `{case.engine.__name__}`" if case.engine else "")
            + f". Expected cause: `{case.expect_cause}`.\n\n"
            f"```\n$ python -m layerbisect.faults --case {name}\n{diagnosis_text(res['report'])}\n```\n\n"
            + (f"Weight audit (`bisect audit REF.gguf CAND/`):\n\n```\n{aud.summary_text()}\n```\n" if aud
               else "")
        )
    path.write_text("\n".join(parts))


_DOC_HEAD = """# Fault-injection suite

Each case derives a broken candidate from a correct one written by the real producer
(llmcompressor `quantize_checkpoint` on a tiny model; `layerbisect/faults.py`), runs
`layerbisect.compare(ref.gguf, broken/)` and `bisect audit`, and checks that the top findings
name the right layer, op and cause category (`tests/faults/`). The text below is the terminal
text of the top findings, regenerated by

    python -m layerbisect.faults --write-docs docs/FAULTS.md

Cause categories (`layerbisect/audit/causes.py`): double_scale, scale_mismatch, scale_inverted,
global_scale_ignored, scale_ignored, act_scale_overflow, kv_cache_scale, kv_calibration,
shard_scale, missing_norm, missing_scale, attention_geometry, nibble_order, layout_permutation,
transposed, quantization_noise.

The two Qwen3.5 cases run on a tiny hybrid model (attention, recurrent, recurrent, attention,
recurrent, attention; real qwen35 vocabulary) converted by llama.cpp's own
`convert_hf_to_gguf.py --no-mtp`. Their checkpoints are what llmcompressor wrote: the fault is
the engine's (its KV calibration pass; its loader), so `bisect audit` of the checkpoint alone
finds nothing, by design.
"""


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(prog="python -m layerbisect.faults", description=__doc__.splitlines()[0])
    ap.add_argument("--write-docs", type=Path, help="write the diagnoses of every case to this markdown file")
    ap.add_argument("--case", choices=list(CASES), help="build and diagnose one case")
    ap.add_argument("--workdir", type=Path, help="where to build (default: a temporary directory)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = a.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if a.write_docs:
            write_docs(a.write_docs, root)
            print(f"wrote {a.write_docs}")
        for name in [a.case] if a.case else ([] if a.write_docs else list(CASES)):
            res = run_case(name, root)
            aud = res["audit"]
            print(f"== {name}\n{diagnosis_text(res['report'])}\n{aud.summary_text() if aud else ''}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
