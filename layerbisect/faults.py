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
- Issue 17's cases (``CASES`` below, each with its public report) plant one defect each by
  ``FaultCase.plant``; most also run on the bundled Gemma 3 270M (``--model gemma3-270m``).
- ``python -m layerbisect.faults --write-docs docs/FAULTS.md`` builds every case on tiny models,
  runs ``compare`` (and ``audit``) and writes the diagnoses into the doc.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
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
    and post-feedforward norms of every layer and on the final norm. Each layer
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


# --- faults from public reports (issue 17) ----------------------------------------------------------------------


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


def _hf(module: str) -> str:
    """``layers.3.mlp.down_proj`` → the suffix every HF spelling of it ends with (``self_attn`` for attention)."""
    return module.replace(".attn.", ".self_attn.")


def scale_weight_scale(src: str | Path, dst: str | Path, module: str = "layers.3.mlp.down_proj",
                       factor: float = 8.0) -> Path:
    """One linear's stored weight scale ×``factor`` (an FP8 multiplier): its output is ``factor``× too large.

    In a model with post-FFN norms (Gemma 2/3) the norm right after the down projection divides
    the factor out again: the residual stream hardly moves, only the op itself shows it.
    """
    out = copy_checkpoint(src, dst)
    key = f"{_hf(module)}.weight_scale"
    _require(edit_tensors(out, lambda k, t: (t.float() * factor).to(t.dtype) if k.endswith(key) else t), out, key)
    return out


def input_global_scale_qkv(src: str | Path, dst: str | Path, layer: int = 0, factor: float = 1000.0) -> Path:
    """NVFP4 ``input_global_scale`` (a divisor, 448·6/amax) of one layer's q/k/v ``factor``× too large.

    The activations then need block scales far beyond E4M3's 448; the producer's quantizer
    saturates them, so the q/k/v inputs clip to ±6·448/gs: tiny q, k, v, no NaN.
    """
    out = copy_checkpoint(src, dst)
    qkv = tuple(f"self_attn.{p}_proj.input_global_scale" for p in "qkv")

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        return t * factor if k.endswith(qkv) and _layer_of(k) == layer else t

    _require(edit_tensors(out, edit), out, f"q/k/v input_global_scale tensors in layer {layer}")
    return out


def head_rows_permuted(src: str | Path, dst: str | Path, module: str = "layers.1.attn.k_proj",
                       pattern: str = "halves") -> Path:
    """The rows of each head of one projection in another order, with their scales (a converter's layout slip).

    ``pattern``: "halves" swaps the two halves of every head (NEOX halves read as the other half),
    "heads" reverses the order of the heads. Weight rows and their scale rows move together, so
    the candidate is the reference's weight with permuted rows, exactly.
    """
    out = copy_checkpoint(src, dst)
    cfg = json.loads((out / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    hd = int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])
    prefix = _hf(module) + "."

    def perm_for(rows: int) -> torch.Tensor:
        heads = rows // hd
        idx = torch.arange(rows).view(heads, hd)
        if pattern == "halves":
            return torch.cat([idx[:, hd // 2:], idx[:, : hd // 2]], dim=1).flatten()
        return idx.flip(0).flatten()

    with_perm: dict[str, torch.Tensor] = {}
    weights = (prefix + "weight", prefix + "weight_packed")

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if not k.endswith(weights):
            return t  # scales: handled below once the row permutation is known
        with_perm["perm"] = perm_for(t.shape[0])
        return t[with_perm["perm"]]

    changed = edit_tensors(out, edit)
    _require(changed, out, f"{module} weights")
    perm = with_perm["perm"]

    def edit_scale(k: str, t: torch.Tensor) -> torch.Tensor:
        if not k.endswith(prefix + "weight_scale") or t.numel() == 1:
            return t
        if t.shape[0] == perm.numel():  # per-row scales (channel, NVFP4/MXFP4 groups)
            return t[perm]
        rows_per = -(-perm.numel() // t.shape[0])  # block rows (partial last block allowed)
        src_blocks = [torch.unique(perm[i * rows_per:(i + 1) * rows_per] // rows_per) for i in range(t.shape[0])]
        if any(b.numel() != 1 for b in src_blocks):
            raise InputError(k, f"the permutation splits {rows_per}-row scale blocks")
        return t[torch.cat(src_blocks)]

    edit_tensors(out, edit_scale)
    return out


def norm_plus_one(src: str | Path, dst: str | Path, norm: str = "input_layernorm", delta: float = 1.0) -> Path:
    """Every ``norm`` weight +``delta``: Gemma's (1 + w) convention applied twice (vLLM 26189, 31464; mlx-lm 1197)."""
    out = copy_checkpoint(src, dst)
    suffix = f".{norm}.weight"
    _require(edit_tensors(out, lambda k, t: (t.float() + delta).to(t.dtype) if k.endswith(suffix) else t), out,
             f"{norm} weights")
    return out


def norm_folded_scale(src: str | Path, dst: str | Path, layer: int = 1, s: float = 2.0) -> Path:
    """The producer folds a scale ``s`` out of a (1 + w) norm into the q/k/v that follow it, writing ``w/s``
    (effective gain 1 + w/s) instead of ``(1 + w)/s − 1`` (llm-compressor issue 2500).

    q/k/v's FP8 ``weight_scale`` (per-tensor multipliers) carry ×s exactly; with s a power of two
    every edit is exact in BF16. The layer's attention input is then (s − 1)·W·x̂ too large.
    """
    out = copy_checkpoint(src, dst)
    qkv = tuple(f"self_attn.{p}_proj.weight_scale" for p in "qkv")

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if _layer_of(k) != layer:
            return t
        if k.endswith(".input_layernorm.weight"):
            return (t.float() / s).to(t.dtype)
        if k.endswith(qkv):
            return (t.float() * s).to(t.dtype)
        return t

    changed = edit_tensors(out, edit)
    _require([c for c in changed if "layernorm" in c], out, f"input_layernorm of layer {layer}")
    _require([c for c in changed if c.endswith(qkv)], out, f"q/k/v weight_scale of layer {layer}")
    return out


def module_kind_scales_one(src: str | Path, dst: str | Path, kind: str = "mlp") -> Path:
    """Every weight scale of one module kind set to 1: the engine runs those linears on raw FP8 codes
    (TensorRT-LLM issue 6499). ``kind``: "mlp" or "self_attn"; "lm_head" for the head alone (SGLang 34895)."""
    out = copy_checkpoint(src, dst)

    def hit(k: str) -> bool:
        if not k.endswith(".weight_scale"):
            return False
        return k.startswith("lm_head.") if kind == "lm_head" else f".{kind}." in k

    _require(edit_tensors(out, lambda k, t: torch.ones_like(t) if hit(k) else t), out, f"{kind} weight scales")
    return out


def embedding_unscaled(src: str | Path, dst: str | Path) -> Path:
    """The embedding table divided by √d: what an engine that drops Gemma's √d normalizer computes (vLLM 48010)."""
    out = copy_checkpoint(src, dst)
    cfg = json.loads((out / "config.json").read_text())
    d = int(cfg.get("text_config", cfg)["hidden_size"])

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        return (t.float() / math.sqrt(d)).to(t.dtype) if k.endswith("embed_tokens.weight") else t

    _require(edit_tensors(out, edit), out, "embed_tokens.weight")
    return out


def shard_global_scales(src: str | Path, dst: str | Path, module: str = "layers.1.mlp.up_proj",
                        factor: float = 0.5) -> Path:
    """Give one NVFP4 shard of a fused group its own global scale, the checkpoint staying exact.

    llmcompressor writes one global scale per fused group (q/k/v, gate/up); ModelOpt writes one per
    projection. ``weight_global_scale`` and the E4M3 block scales are both ×``factor`` (a power of
    two: exact while no block scale underflows), so ``block/global`` — the dequantized weight — is
    unchanged. Run with ``fused_shards_share_first_scale`` for the engine's bug.
    """
    out = copy_checkpoint(src, dst)
    prefix = _hf(module) + "."

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if k.endswith(prefix + "weight_global_scale"):
            return t * factor
        if k.endswith(prefix + "weight_scale"):
            scaled = (t.float() * factor).to(t.dtype)
            if not torch.equal(scaled.float(), t.float() * factor):
                raise InputError(k, f"block scales ×{factor} are not exact in E4M3")
            return scaled
        return t

    _require(edit_tensors(out, edit), out, f"{module} NVFP4 scales")
    return out


def mx_exponent_offset(src: str | Path, dst: str | Path, offset: int = -2) -> Path:
    """Every MXFP4 E8M0 exponent +``offset``: -2 is the element offset subtracted a second time (×¼; vLLM 35562)."""
    out = copy_checkpoint(src, dst)

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if k.endswith(".weight_scale") and t.dtype == torch.uint8:
            return (t.to(torch.int16) + offset).clamp(0, 254).to(torch.uint8)
        return t

    _require(edit_tensors(out, edit), out, "uint8 (E8M0) weight_scale tensors")
    return out


def scales_to_pow2(src: str | Path, dst: str | Path) -> Path:
    """Every FP8 weight scale rounded up to a power of two, the FP8 codes left as they were (transformers 47030)."""
    out = copy_checkpoint(src, dst)

    def edit(k: str, t: torch.Tensor) -> torch.Tensor:
        if k.endswith(".weight_scale") and t.is_floating_point() and t.dtype != torch.float8_e4m3fn:
            return torch.exp2(torch.ceil(torch.log2(t.float()))).to(t.dtype)
        return t

    _require(edit_tensors(out, edit), out, "FP8 weight_scale tensors")
    return out


def softcap_dropped(src: str | Path, dst: str | Path, which: str = "final") -> Path:
    """The candidate's config loses its softcap (SGLang 33915): ``final_logit_softcapping`` or the attention one."""
    out = copy_checkpoint(src, dst)
    key = "final_logit_softcapping" if which == "final" else "attn_logit_softcapping"

    def edit(cfg: dict[str, Any]) -> None:
        if not cfg.get(key):
            raise InputError(out / "config.json", f"has no {key} to drop")
        cfg[key] = None

    edit_config(out, edit)
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


@contextlib.contextmanager
def fused_shards_share_first_scale() -> Iterator[None]:
    """Engine fault: every NVFP4 fused group (q/k/v, gate/up) runs under its first shard's global scale.

    What an engine that fuses gate and up into one GEMM with one global scale does when the
    checkpoint gives the shards different ones (vLLM issue 54974; ModelOpt writes one per shard).
    """
    from .candidates.runner import CandidateRunner
    from .expected.quantize import fused_groups

    saved = CandidateRunner.materialize

    def materialize(self: Any, plan: Any, prefix: str) -> Any:
        state, linears = saved(self, plan, prefix)
        names = [prefix + n for n in linears]
        for group in fused_groups(names):
            mods = [linears[n[len(prefix):]] for n in group]
            if all(hasattr(m, "weight_global") for m in mods):
                for m in mods[1:]:
                    m.weight_global = mods[0].weight_global.clone()
        return state, linears

    CandidateRunner.materialize = materialize  # type: ignore[method-assign]
    try:
        yield
    finally:
        CandidateRunner.materialize = saved  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------------------------------
# the suite
# ---------------------------------------------------------------------------------------------------------------

Plant = Callable[[Path, Path, list[int], "int | None"], Path]  # (clean, out, prompt ids, layer) -> broken


@dataclass(frozen=True)
class FaultCase:
    """One planted fault. ``expect_layer``/``expect_op``: where the headline culprit must point on the tiny model;
    ``gemma_layer``: the layer planted in Gemma 3 270M (-1: the same; None: the case has no Gemma version)."""

    name: str
    seed: str  # the public report it reproduces (a seed file under /work/shared/seeds or an issue)
    arch: str  # a tiny architecture (producers/tiny.py) or "gemma4-<variant>" (producers/tiny_gemma4.py)
    scheme: str
    summary: str
    expect_cause: str
    expect_layer: int | None
    expect_op: str | None  # an op name the diagnosis must mention (prefix match)
    engine: Callable[[], contextlib.AbstractContextManager[None]] | None = None
    compare_kw: dict[str, Any] = field(default_factory=dict)
    plant: Plant | None = None
    gemma_layer: int | None = -1
    producer_kw: dict[str, Any] = field(default_factory=dict)  # quantize_checkpoint options (e.g. ignore=())
    derived: bool = False  # the culprit's place comes from the reference (the first value past FP16's range)
    dump: bool = False  # the candidate is an engine dump (captured activations), not a checkpoint

    def layer_for(self, model: str) -> int | None:
        if model == "tiny" or self.gemma_layer == -1:
            return self.expect_layer
        return self.gemma_layer


def _unscaled_norms() -> dict[str, Any]:
    from .candidates.qlinear import QuantOptions

    return {"quant_options": QuantOptions(norm_act_quant="unscaled")}


# Seeds 000 and 004 on tiny Gemma 4 (producers/tiny_gemma4.py: GGUF by llama.cpp's converter,
# candidates by llmcompressor).
GEMMA4_CASES: tuple[FaultCase, ...] = (
    FaultCase("g4_norm_act_unscaled", "000", "gemma4-dense", "FP8_BLOCK",
              "what-if --norm-act-quant unscaled: residual-writing and final norm outputs FP8-quantized per token, "
              "scale dropped as if absorbed (checkpoint untouched)",
              "double_scale", 0, "attn.post_norm", compare_kw=_unscaled_norms(), gemma_layer=None,
              plant=lambda c, o, ids, i: c),
    FaultCase("g4_double_scale_norms", "000", "gemma4-dense", "FP8_BLOCK",
              "absorbed scale applied again to the residual-writing and final norm gains (x8), planted",
              "double_scale", 0, "attn.post_norm", gemma_layer=None,
              plant=lambda c, o, ids, i: double_scale_norms(c, o)),
    FaultCase("g4_dropped_ffn_norms", "004", "gemma4-moe", "NVFP4",
              "base pre_feedforward_layernorm and post_feedforward_layernorm missing in every layer",
              "missing_norm", 0, "mlp_norm", compare_kw={"generate": 0}, gemma_layer=None,
              plant=lambda c, o, ids, i: drop_tensors(c, o, (".pre_feedforward_layernorm.weight",
                                                            ".post_feedforward_layernorm.weight"),
                                                      "base feed-forward norms")),
    FaultCase("g4_missing_layer_scalars", "004", "gemma4-moe", "NVFP4",
              "layer_scalar missing in every layer (run as 1.0)",
              "missing_scale", 0, "layer_scalar", compare_kw={"generate": 0}, gemma_layer=None,
              plant=lambda c, o, ids, i: drop_tensors(c, o, (".layer_scalar",), "layer_scalar tensors")),
    FaultCase("g4_missing_router_scales", "004", "gemma4-moe", "NVFP4",
              "router.scale and router.per_expert_scale missing in every layer (run as 1.0)",
              "missing_scale", 0, "mlp.router_scale", compare_kw={"generate": 0}, gemma_layer=None,
              plant=lambda c, o, ids, i: drop_tensors(c, o, (".router.scale", ".router.per_expert_scale"),
                                                      "router scales")),
    FaultCase("g4_global_head_dim_dump", "004", "gemma4-moe", "-",
              "engine dump: transformers with global-layer q/k/v buffers sized for the sliding head_dim",
              "attention_geometry", 5, "attn.v", dump=True, gemma_layer=None,
              plant=lambda c, o, ids, i: global_head_dim_dump(c, o, ids)),
)


def _fp16() -> dict[str, Any]:
    from .candidates.qlinear import QuantOptions

    return {"quant_options": QuantOptions(compute_dtype="fp16")}


def _same(clean: Path, out: Path, ids: list[int], layer: int | None) -> Path:
    return copy_checkpoint(clean, out)


_L = "layers.{}."

CASES: dict[str, FaultCase] = {
    c.name: c
    for c in (
        FaultCase("double_scale_norms", "seed 000", "gemma2", "FP8_BLOCK",
                  "absorbed scales applied again to the residual-writing norm gains (x8)",
                  "double_scale", 0, "attn.post_norm", plant=lambda c, o, ids, i: double_scale_norms(c, o)),
        FaultCase("input_scale_overflow", "seed 002", "gemma2", "NVFP4",
                  "layer 0 NVFP4 input_global_scale 1000x too large; non-saturating block-scale cast",
                  "act_scale_overflow", 0, "attn.q", engine=non_saturating_block_scales,
                  plant=lambda c, o, ids, i: input_scale_overflow(c, o, layer=i or 0)),
        FaultCase("kv_scales_garbage", "seed 003", "gemma2", "FP8",
                  "FP8 KV-cache k_scale/v_scale of one layer calibrated on garbage (200x too small)",
                  "kv_cache_scale", 1, "attn.k", gemma_layer=5,
                  plant=lambda c, o, ids, i: kv_scales_garbage(c, o, ids, layer=i if i is not None else 1)),
        FaultCase("dropped_norms", "seed 004", "gemma2", "FP8_DYNAMIC",
                  "pre_feedforward_layernorm dropped in every layer",
                  "missing_norm", 0, "mlp_norm", plant=lambda c, o, ids, i: dropped_norms(c, o)),
        FaultCase("global_scale_inverted", "NVFP4 divisor vs multiplier", "llama", "NVFP4A16",
                  "one mlp.gate_proj weight_global_scale stored as its reciprocal",
                  "scale_inverted", 1, "mlp.gate", gemma_layer=4,
                  plant=lambda c, o, ids, i: global_scale_inverted(c, o, module=f"layers.{i}.mlp.gate_proj")),
        FaultCase("nibble_swap", "FP4 nibble order", "llama", "NVFP4A16",
                  "FP4 nibble order swapped in every weight_packed of one layer",
                  "nibble_order", 1, None, gemma_layer=2, plant=lambda c, o, ids, i: swap_nibbles(c, o, layer=i or 0)),
        FaultCase("expert_weight_scale", "-", "qwen3moe", "FP8_DYNAMIC",
                  "the weight_scale of routed expert 5's down_proj in layer 1 multiplied by 4",
                  "scale_mismatch", 1, "mlp.experts.5.down", gemma_layer=None,
                  plant=lambda c, o, ids, i: expert_weight_scale(c, o)),
        FaultCase("down_scale_x8", "issue 17 (first failure)", "gemma3", "FP8",
                  "one layer's mlp.down_proj weight_scale x8 in a model with post-FFN norms",
                  "scale_mismatch", 3, "mlp.down_proj", gemma_layer=6,
                  plant=lambda c, o, ids, i: scale_weight_scale(c, o, f"layers.{i}.mlp.down_proj", 8.0)),
        FaultCase("qkv_input_global_scale", "issue 17 (second failure)", "gemma3", "NVFP4",
                  "NVFP4 input_global_scale of layer 0's q/k/v 1000x too large (saturating kernels: no NaN)",
                  "act_scale_overflow", 0, "attn.q_proj",
                  plant=lambda c, o, ids, i: input_global_scale_qkv(c, o, layer=i or 0)),
        FaultCase("head_halves_swapped", "issue 17 (third failure)", "gemma3", "FP8_BLOCK",
                  "the two halves of every head's rows swapped in one k_proj (rows and block scales)",
                  "layout_permutation", 1, "attn.k_proj", gemma_layer=3,
                  plant=lambda c, o, ids, i: head_rows_permuted(c, o, f"layers.{i}.attn.k_proj", "halves")),
        FaultCase("heads_reordered", "llama.cpp Q/K permute family", "gemma3", "FP8",
                  "the heads of one q_proj in reverse order",
                  "layout_permutation", 2, "attn.q_proj",
                  plant=lambda c, o, ids, i: head_rows_permuted(c, o, f"layers.{i}.attn.q_proj", "heads")),
        FaultCase("norm_plus_one", "vLLM 26189, 31464; mlx-lm 1197", "gemma3", "FP8_DYNAMIC",
                  "every input_layernorm weight +1: Gemma's (1 + w) applied twice",
                  "norm_convention", 0, "attn_norm",
                  plant=lambda c, o, ids, i: norm_plus_one(c, o, "input_layernorm", 1.0)),
        FaultCase("norm_folded_scale", "llm-compressor 2500", "gemma3", "FP8",
                  "a scale s = 2 folded out of one input_layernorm as 1 + w/s instead of (1 + w)/s (q/k/v carry s)",
                  "norm_convention", 1, "attn_norm", gemma_layer=2,
                  plant=lambda c, o, ids, i: norm_folded_scale(c, o, layer=i if i is not None else 1, s=2.0)),
        FaultCase("mlp_scales_one", "TensorRT-LLM 6499", "gemma3", "FP8_BLOCK",
                  "every MLP weight_scale set to 1: the MLPs run on raw FP8 codes",
                  "scale_ignored", 0, "mlp.gate_proj", plant=lambda c, o, ids, i: module_kind_scales_one(c, o, "mlp")),
        FaultCase("lm_head_scale_dropped", "SGLang 34895", "llama", "FP8",
                  "an FP8 lm_head whose weight_scale was dropped (run as 1: raw codes)",
                  "scale_ignored", None, "lm_head", gemma_layer=None, producer_kw={"ignore": ()},
                  plant=lambda c, o, ids, i: module_kind_scales_one(c, o, "lm_head")),
        FaultCase("embed_unscaled", "vLLM 48010", "gemma3", "FP8",
                  "the embedding's √d normalizer missing (embedding divided by √d)",
                  "embed_scale", None, "embed", plant=lambda c, o, ids, i: embedding_unscaled(c, o)),
        FaultCase("final_softcap_missing", "SGLang 33915", "gemma2", "FP8",
                  "the final logit softcap not applied (config without final_logit_softcapping)",
                  "softcap_missing", None, "logits", gemma_layer=None,
                  plant=lambda c, o, ids, i: softcap_dropped(c, o, "final")),
        FaultCase("shard_global_scale", "vLLM 54974", "gemma3", "NVFP4",
                  "gate/up with different NVFP4 global scales run under gate's (engine fuses them)",
                  "shard_scale_mismatch", 1, "mlp.up_proj", gemma_layer=5, engine=fused_shards_share_first_scale,
                  plant=lambda c, o, ids, i: shard_global_scales(c, o, f"layers.{i}.mlp.up_proj", 0.5)),
        FaultCase("mx_exponent_twice", "vLLM 35562", "gemma3", "MXFP4",
                  "MXFP4 E8M0 element offset subtracted twice: every weight x1/4",
                  "exponent_offset", 0, "attn.q_proj", plant=lambda c, o, ids, i: mx_exponent_offset(c, o, -2)),
        FaultCase("block_scales_pow2", "transformers 47030", "gemma3", "FP8_BLOCK",
                  "FP8 block scales rounded up to powers of two without requantizing the weights",
                  "scale_rounding", 0, "attn.q_proj", plant=lambda c, o, ids, i: scales_to_pow2(c, o)),
        FaultCase("fp16_overflow", "transformers 36822, llama.cpp 26044", "gemma3-hot", "FP8",
                  "the candidate computing in FP16: a value past 65504 (the clean checkpoint, --compute-dtype fp16)",
                  "compute_overflow", None, None, compare_kw={}, derived=True, plant=_same),
        *GEMMA4_CASES,
        FaultCase("kv_calibration_garbage_state", "003", "qwen35", "FP8_DYNAMIC",
                  "FP8 KV cache, scales calibrated on a first pass whose recurrent layers started from "
                  "uninitialized state (--kv-scales calibrate --kv-calibration garbage-state), frozen, "
                  "then the prompt",
                  "kv_calibration", 3, "attn.k",
                  compare_kw={"kv_cache": KVCacheOptions(dtype="fp8_e4m3", scales="calibrate",
                                                         calibration="garbage-state")},
                  gemma_layer=None, plant=lambda c, o, ids, i: c),
        FaultCase("fused_shard_scale", "vLLM 38197", "qwen35", "FP8",
                  "in_proj_qkv's per-tensor FP8 weight scale applied to its first shard (q) only in layer 1",
                  "shard_scale", 1, "attn.in_proj_qkv", engine=vllm_38197_in_layer_1,
                  gemma_layer=None, plant=lambda c, o, ids, i: c),
    )
}
_COMPUTE = {"fp16_overflow": "fp16"}  # cases whose engine fault is the compute dtype (--compute-dtype)


def build_case(name: str, clean: Path, out: Path, prompt_ids: list[int], model: str = "tiny") -> Path:
    """The broken checkpoint of case ``name``, derived from the producer's ``clean`` checkpoint."""
    case = CASES.get(name)
    if case is None or case.plant is None:
        raise InputError("fault", f"unknown fault case {name!r}; choose one of {', '.join(CASES)}")
    return case.plant(clean, out, prompt_ids, case.layer_for(model))


PROMPT = "The capital of France is Paris, and the capital of Italy is"
GEMMA_PROMPT = "The capital of France is"
GEMMA = "gemma3-270m"
HOT_LAYER, HOT_FACTOR = 1, 300.0  # gemma3-hot: layer 1's gate/up ×300, so act(gate)·up passes 65504


QWEN35_FAULT_LAYERS = ["full_attention", "linear_attention", "linear_attention", "full_attention", "linear_attention",
                      "full_attention"]  # an attention layer before any recurrent one (its calibration stays clean)


def tiny_sources(root: Path, archs: tuple[str, ...] = ("gemma2", "llama")) -> dict[str, dict[str, Path]]:
    """arch → {"hf": BF16 tiny HF dir, "gguf": F32 GGUF of the same weights by llama.cpp's own converter}.

    ``gemma3-hot`` is the tiny Gemma 3 with layer 1's gate and up projections ×300 (both sides): its
    ``mlp.act`` reaches ~1e5, past FP16's 65504, as the real Gemma 3 270M's residual stream does.
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
            make_tiny_hf(arch.removesuffix("-hot"), hf, dtype="bfloat16", hidden=64 if arch == "qwen3moe" else None,
                         vocabulary="auto")
            if arch.endswith("-hot"):
                edit_tensors(hf, _hot_edit)
        out[arch] = {"hf": hf, "gguf": converted_gguf(hf, outtype="f32")}
    return out


def _hot_edit(k: str, t: torch.Tensor) -> torch.Tensor:
    keys = (f"layers.{HOT_LAYER}.mlp.gate_proj.weight", f"layers.{HOT_LAYER}.mlp.up_proj.weight")
    return (t.float() * HOT_FACTOR).to(t.dtype) if k.endswith(keys) else t


def gemma_sources() -> dict[str, Path]:
    """The bundled Gemma 3 270M: the Q4_K_M GGUF (reference) and its BF16 HF weights (the producer's input)."""
    from .producers.cache import bundled_gguf
    from .producers.hf_from_gguf import hf_checkpoint_from_gguf

    gguf = bundled_gguf()
    return {"gguf": gguf, "hf": hf_checkpoint_from_gguf(gguf)}


def clean_candidate(root: Path, src: dict[str, Path], arch: str, scheme: str, **producer_kw: Any) -> Path:
    """The producer's checkpoint (cached under ``$LAYERBISECT_CACHE/candidates``, keyed by source and options)."""
    from .producers.quantize import quantize_checkpoint

    # Cached by content (the tiny sources are seeded, so a warm cache skips llmcompressor);
    # MoE routers stay unquantized, as every published MoE recipe keeps them ("re:.*mlp.gate$").
    ignore = ("lm_head", "re:.*mlp.gate$") if arch == "qwen3moe" else ("lm_head",)
    return quantize_checkpoint(src["hf"], scheme, None, **{"ignore": ignore, **producer_kw})


def prompt_ids_for(hf_dir: Path) -> list[int]:
    from .candidates.checkpoint import Checkpoint

    return list(Checkpoint(hf_dir).tokenizer().encode(PROMPT))


def gguf_prompt_ids(gguf: Path, text: str = GEMMA_PROMPT) -> list[int]:
    """The prompt through the reference GGUF's own vocabulary (the Gemma checkpoints' tokenizer.json, written by
    transformers' GGUF export, segments it into single characters)."""
    import gguf as gg

    from .tokenizer import tokenizer_from_gguf

    return list(tokenizer_from_gguf(gg.GGUFReader(str(gguf)), str(gguf)).encode(text))


def run_case(name: str, root: Path, *, audit: bool = True, model: str = "tiny", keep: bool = True) -> dict[str, Any]:
    """Build case ``name`` under ``root`` and diagnose it: compare (+ audit); returns report, audit, expectations.

    ``model``: "tiny" (the fast suite: tiny random models made by the real producer) or "gemma3-270m" (the
    bundled real model; minutes per case). ``keep=False`` deletes the broken copy afterwards.
    """
    from .candidates.qlinear import QuantOptions
    from .pipeline import CompareOptions, compare

    case = CASES[name]
    if case.dump:  # an engine run on the unquantized weights, captured: nothing to quantize or audit
        if model != "tiny":
            raise InputError("fault", f"case {name!r} has no Gemma 3 270M version")
        src = tiny_sources(root, (case.arch,))[case.arch]
        ids = prompt_ids_for(src["hf"])
        dump = build_case(name, src["hf"], root / f"fault-{name}", ids)
        t0 = time.perf_counter()
        report = compare(src["gguf"], candidate_dump=dump,
                         options=CompareOptions(prompt=None, tokens=ids, generate=0, **case.compare_kw))
        result = {"case": case, "report": report, "broken": dump, "ref": src["gguf"], "audit": None,
                  "expect": (case.expect_layer, case.expect_op), "model": model,
                  "seconds": time.perf_counter() - t0, "clean": src["hf"]}
        result["problems"] = check(result)
        return result
    if model == "tiny":
        src = tiny_sources(root, (case.arch,))[case.arch]
        clean = clean_candidate(root, src, case.arch, case.scheme, **case.producer_kw)
        ids, gen = prompt_ids_for(clean), 4
    else:
        if case.gemma_layer is None:
            raise InputError("fault", f"case {name!r} has no Gemma 3 270M version")
        src = gemma_sources()
        clean = clean_candidate(root, src, "gemma3", case.scheme, **case.producer_kw)
        ids, gen = gguf_prompt_ids(src["gguf"]), 4
    layer = case.layer_for(model)
    broken = case.plant(clean, root / f"fault-{name}", ids, layer) if case.plant else clean
    kw = dict(case.compare_kw)
    if name in _COMPUTE:
        kw["quant_options"] = QuantOptions(compute_dtype=_COMPUTE[name])  # type: ignore[arg-type]
    opts = CompareOptions(prompt=None, tokens=ids, **{"generate": gen, **kw})
    ctx = case.engine() if case.engine else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx:
        report = compare(src["gguf"], broken, options=opts)
        aud = None
        if audit and model == "tiny":
            from .api import audit_weights

            aud = audit_weights(src["gguf"], broken)
    seconds = time.perf_counter() - t0
    expect = (layer, case.expect_op)
    if case.derived:
        expect = _first_overflow(report)
    result: dict[str, Any] = {"case": case, "report": report, "broken": broken, "ref": src["gguf"], "audit": aud,
                              "expect": expect, "model": model, "seconds": seconds, "clean": clean}
    result["problems"] = check(result)
    if not keep and broken != clean and broken.exists():
        shutil.rmtree(broken, ignore_errors=True)
    return result


def _first_overflow(report: Any) -> tuple[int | None, str | None]:
    """Where FP16 must overflow first: the onset the reference's FP32 magnitudes predict (via the finding)."""
    f = next((f for f in report.findings if f.kind == "nonfinite_onset"), None)
    return (f.layer, f.op) if f is not None else (None, None)


def culprit(report: Any) -> Any:
    cs = [f for f in report.findings if f.kind == "culprit" and (f.evidence or {}).get("source") != "bisect"]
    return cs[0] if cs else None


def check(result: dict[str, Any]) -> list[str]:
    """What is wrong with a case's diagnosis (empty: the headline culprit names the planted layer, op and cause)."""
    case, report = result["case"], result["report"]
    top = culprit(report)
    if top is None:
        return ["no culprit finding"]
    problems = []
    if top.evidence.get("cause") != case.expect_cause:
        problems.append(f"cause {top.evidence.get('cause')!r}, expected {case.expect_cause!r}")
    if top.severity != "critical":
        problems.append(f"culprit severity {top.severity}")
    layer, op = result["expect"]
    if top.layer != layer:
        problems.append(f"culprit layer {top.layer}, expected {layer}")
    if op and not _op_matches(top.op or "", op):
        problems.append(f"culprit op {top.op!r}, expected {op!r}")
    if case.derived and top.evidence.get("cause") == "compute_overflow":
        ev = top.evidence.get("cause_evidence", {})
        if "65504" not in str(ev.get("why", "")) and "65504" not in top.detail:
            problems.append("overflow not explained by FP16's range")
    return problems


def _op_matches(got: str, want: str) -> bool:
    alias = {"attn.post_norm": "post_attn_norm", "mlp.post_norm": "post_mlp_norm"}
    w = alias.get(want, want)
    return got.startswith(want) or got.startswith(w) or got.removesuffix("_proj") == want.removesuffix("_proj")


def diagnosis_text(report: Any, n: int = 4) -> str:
    lines = []
    for f in report.findings[:n]:
        lines.append(f"[{f.severity}] {f.kind}: {f.title}")
        if f.detail:
            lines.append(f"    {f.detail}")
    return "\n".join(lines)


def audit_text(result: dict[str, Any], limit: int = 8) -> str:
    """The weight audit's faults: the separate ``bisect audit`` run (tiny) or the run record's audit (Gemma)."""
    if result.get("audit") is not None:
        return result["audit"].summary_text(limit)
    audits = result["report"].record.audits
    if audits is None:
        return "weight audit: not run"
    faults = audits.weight_faults
    if not faults:
        return f"weight audit: no fault in {len(audits.weights)} tensors"
    lines = [f"weight audit: {len(faults)} fault(s) in {len(audits.weights)} tensors"]
    for r in faults[:limit]:
        lines.append(f"  {r.status:<7} {r.cause:<22} {r.name:<34} cos {r.cosine:.4f}  α {r.alpha:.4g}  {r.note}")
    if len(faults) > limit:
        lines.append(f"  ... {len(faults) - limit} more")
    return "\n".join(lines)


def cases_for(model: str) -> list[str]:
    return [n for n, c in CASES.items() if model == "tiny" or c.gemma_layer is not None]


def run_clean(root: Path, scheme: str, model: str = "tiny", arch: str = "gemma3") -> dict[str, Any]:
    """A correct candidate through the whole pipeline (no false alarm): report, gate result, seconds."""
    from .comparison.gate import evaluate
    from .pipeline import CompareOptions, compare

    if model == "tiny":
        src = tiny_sources(root, (arch,))[arch]
        clean = clean_candidate(root, src, arch, scheme)
        ids = prompt_ids_for(clean)
    else:
        src = gemma_sources()
        clean = clean_candidate(root, src, "gemma3", scheme)
        ids = gguf_prompt_ids(src["gguf"])
    t0 = time.perf_counter()
    report = compare(src["gguf"], clean, options=CompareOptions(prompt=None, tokens=ids, generate=4))
    return {"scheme": scheme, "report": report, "gate": evaluate(report), "seconds": time.perf_counter() - t0,
            "clean": clean, "ref": src["gguf"], "ids": ids}


def write_docs(path: Path, root: Path, model: str = GEMMA, names: list[str] | None = None,
               schemes: tuple[str, ...] | None = None, say: Callable[[str], None] = print) -> None:
    """Regenerate docs/FAULTS.md from real runs: every case, the clean schemes, the noise margins, the tokenizer."""
    import textwrap

    from .audit.causes import CAUSES
    from .producers.quantize import SCHEMES

    t_all = time.perf_counter()
    sections: list[str] = []
    table: list[str] = []
    clean_rows: list[str] = []
    margin_rows: list[str] = []
    state: dict[str, Any] = {"problems": 0}

    def flush() -> None:  # the doc so far: a long regeneration leaves a valid page after every run
        tok_text = ""
        tok = state.get("tok")
        if model != "tiny" and tok is not None:
            tf = [f for f in tok["report"].findings if f.kind == "tokenizer_mismatch"]
            ids = ",".join(str(i) for i in tok["ids"])
            lead = ("With ids given on the command line the compared ids are the same on both sides, so a "
                    "difference between the tokenizers is a warning and the gate passes:" if tf else
                    "The clean checkpoints' tokenizer.json segments the prompt exactly like the GGUF's vocabulary: "
                    "no tokenizer finding.")
            tok_text = (
                f"## The tokenizer case\n\n{lead}\n\n```\n$ bisect $(python -c 'from "
                "layerbisect.producers.cache import bundled_gguf; print(bundled_gguf())')"
                f" {tok['clean']} --tokens {ids}\n"
                + "\n".join(f"[{f.severity}] {f.kind}: {f.title}\n    {f.detail}" for f in tf)
                + f"\ngate: {'PASS' if tok['gate'].passed else 'FAIL'} → exit code {tok['gate'].exit_code}\n```\n"
            )
        minutes = (time.perf_counter() - t_all) / 60
        cmd = f"python -m layerbisect.faults --model {model} --write-docs {path}" + (
            f" --cases {','.join(names)}" if names else "") + (f" --schemes {','.join(schemes)}" if schemes else "")
        doc = _DOC_HEAD.format(model=model, causes=textwrap.fill(", ".join(CAUSES), 96)) + (
            f"\n## Summary ({model})\n\n{len(table)} cases, {state['problems']} problem(s); regenerated in "
            f"{minutes:.0f} min on this machine (2 shared CPU cores) by `{cmd}`.\n\n"
            "| case | report | scheme | cause | headline right | culprit | time |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(table) + "\n\n"
            "## No false alarm: the clean checkpoints\n\nEach scheme's checkpoint as the producer wrote it, "
            "through the whole pipeline with the built-in gate (derived from the expected lane).\n\n"
            "| scheme | critical findings | built-in gate | culprit cause | logit KL cand / expected | top-1 cand / "
            "expected | time |\n|---|---|---|---|---|---|---|\n" + "\n".join(clean_rows) + "\n\n"
            "## Noise margins\n\nExcess = candidate relative error / (3 × expected + 0.02) per point "
            "(`comparison/noise.py`): > 1 is beyond the format's noise. On the clean checkpoints (median, 99th "
            "percentile, max over all points), and the expected lane's cost (quantizing the reference's weights with "
            "the producer's rounding, one forward and the patching passes):\n\n"
            "| scheme | median | p99 | max | expected lane |\n|---|---|---|---|---|\n" + "\n".join(margin_rows)
            + "\n\n"
            + tok_text + "\n## Cases\n\n" + "\n".join(sections)
        )
        path.write_text(doc)

    for name in names or cases_for(model):
        case = CASES[name]
        say(f"case {name}")
        res = run_case(name, root, model=model, keep=False)
        top = culprit(res["report"])
        ok = not res["problems"]
        state["problems"] += not ok
        where = f"layer {top.layer}, {top.op}" if top is not None and top.layer is not None else (
            str(top.op) if top is not None else "-")
        table.append(f"| `{name}` | {case.seed} | {case.scheme} | `{case.expect_cause}` | "
                     f"{'✓' if ok else '✗ ' + '; '.join(res['problems'])} | {where} | {res['seconds']:.0f} s |")
        layer = case.layer_for(model)
        planted = "" if layer is None else f" Planted in layer {layer}."
        engine = f" Engine fault: `{case.engine.__name__}`." if case.engine else ""
        compute = f" Run with `--compute-dtype {_COMPUTE[name]}`." if name in _COMPUTE else ""
        sections.append(
            f"### {name}\n\n{case.summary}. Report: {case.seed}. Producer scheme {case.scheme}.{planted}{engine}"
            f"{compute} Expected: cause `{case.expect_cause}`"
            + (f", op `{case.expect_op}`" if case.expect_op else "") + ".\n\n"
            f"```\n$ python -m layerbisect.faults --model {model} --case {name}\n"
            f"{diagnosis_text(res['report'], 4)}\n\n{audit_text(res, 6)}\n```\n"
        )
        flush()
    for scheme in schemes or SCHEMES:
        say(f"clean {scheme}")
        res = run_clean(root, scheme, model)
        r, n = res["report"], res["report"].record.noise
        crit = [f for f in r.findings if f.severity == "critical"]
        state["problems"] += bool(crit) or not res["gate"].passed
        top = culprit(r)
        clean_rows.append(
            f"| {scheme} | {len(crit)} | {'PASS' if res['gate'].passed else 'FAIL'} ({res['gate'].checked} checks) | "
            f"{top.evidence.get('cause') if top is not None else '-'} | "
            f"{n.cand_mean_kl:.4g} / {n.expected_mean_kl:.4g} | {n.cand_top1:.0%} / {n.expected_top1:.0%} | "
            f"{res['seconds']:.0f} s |" if n is not None else f"| {scheme} | {len(crit)} | - | - | - | - | - |")
        if n is not None:
            ex = sorted(p.excess for p in n.points)
            worst = max(n.points, key=lambda p: p.excess)
            margin_rows.append(f"| {scheme} | {ex[len(ex) // 2]:.2f} | {ex[int(len(ex) * 0.99)]:.2f} | {ex[-1]:.2f} "
                               f"(`{worst.point}`: {worst.cand_rel_l2:.3g} vs {worst.expected_rel_l2:.3g}) | "
                               f"{r.record.runtime.timings_s.get('expected_lane', math.nan):.1f} s |")
        if scheme == "FP8":
            state["tok"] = res
        flush()
    flush()


_DOC_HEAD = """# Fault-injection suite

Each case takes a checkpoint written by the real producer (llmcompressor `oneshot`, cached by
`producers/quantize.py`), plants one defect from a public bug report into a copy (safetensors'
own API, or an engine behaviour patched into our emulation for the run), runs
`layerbisect.compare(ref.gguf, broken/)` and checks that the **headline culprit** names the
planted layer and op with the right cause category (`layerbisect/faults.py: check`).

Two tiers:
- **fast** (`tests/faults/`, every test run): each case on a tiny random model of the same
  family made by the same producer (`--model tiny`), seconds each;
- **real** (this page, model `{model}`): the bundled Gemma 3 270M (Q4_K_M GGUF reference; HF
  BF16 weights quantized by llmcompressor for FP8, FP8_DYNAMIC, FP8_BLOCK, NVFP4, NVFP4A16,
  MXFP4, MXFP4A16), minutes each. Regenerate this page with

      python -m layerbisect.faults --model {model} --write-docs docs/FAULTS.md

  and diagnose one case with the command shown under it. Candidates are built once into the
  cache (`$LAYERBISECT_CACHE/candidates/`); broken copies live in a temporary directory.

Cause categories (`layerbisect/audit/causes.py`):
{causes}
The culprit is evidence-first: a critical audit, scale, non-finite or softcap finding decides
its layer and op (the first in execution order); otherwise the first layer whose own error is
beyond the format's noise (the expected lane) and its first op beyond it. The layer
with the largest local error is reported separately (`largest_local_error`).

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
    ap.add_argument("--model", choices=["tiny", GEMMA], default="tiny", help="tiny models or the bundled Gemma 3 270M")
    ap.add_argument("--workdir", type=Path, help="where to build (default: a temporary directory)")
    ap.add_argument("--cases", help="with --write-docs: a comma-separated subset of the cases (default: all)")
    ap.add_argument("--schemes", help="with --write-docs: the clean schemes to run (default: all the producer's)")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.cases.split(",")] if a.cases else None
    if names and (bad := [n for n in names if n not in CASES]):
        ap.error(f"unknown case(s) {', '.join(bad)}")  # exit 2, one line
    schemes = tuple(x.strip() for x in a.schemes.split(",")) if a.schemes else None
    with tempfile.TemporaryDirectory() as tmp:
        root = a.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if a.write_docs:
            write_docs(a.write_docs, root, a.model, names, schemes)
            print(f"wrote {a.write_docs}")
        bad = 0
        for name in [a.case] if a.case else ([] if a.write_docs else cases_for(a.model)):
            res = run_case(name, root, model=a.model, keep=a.workdir is not None)
            verdict = "ok" if not res["problems"] else "WRONG: " + "; ".join(res["problems"])
            bad += bool(res["problems"])
            print(f"== {name} ({a.model}, {res['seconds']:.0f} s): {verdict}\n{diagnosis_text(res['report'])}\n"
                  f"{audit_text(res)}\n")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
