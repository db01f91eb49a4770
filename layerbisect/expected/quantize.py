"""Reference weights quantized with a candidate's own scheme, by the producer's own rounding.

Design notes
- The expected lane needs what a *correct* producer run would have written from the reference's
  weights: the same scheme, the same observers, the same rounding. We reproduce llmcompressor's
  weight calibration (memoryless min/max per strategy group, ``observers/helpers.flatten_for_calibration``;
  NVFP4 global scales shared by fused siblings, ``observers/base.get_global_scale``) and hand
  everything numeric to compressed-tensors itself: ``calculate_qparams`` and ``generate_gparam``
  for the scales, the format's own compressor (``FloatQuantizationCompressor``,
  ``NVFP4PackedCompressor``, ``MXFP4PackedCompressor``) for the stored tensors. The result is a
  dict of checkpoint tensors that ``candidates.qlinear.build_linear`` loads like any checkpoint,
  so the expected lane runs through exactly the candidate's emulation.
  (``tests/expected/test_quantize.py``: on the producer's own BF16 weights this is bit-identical
  to the checkpoint llmcompressor wrote.)
- The producer quantizes in the model's dtype (BF16 for the real models); ``dtype`` says which.
- Static activation scales come from calibration in the producer; here from the reference's own
  inputs of each linear on the prompt (``lane._static_inputs``: probe hooks): FP8 ``input_scale`` = amax/448
  (min/max observer over one sample), NVFP4 ``input_global_scale`` = 448·6/amax.
- Without compressed-tensors (it comes with the ``produce`` extra) the same steps run on our
  kernels (``kernels/fp8.py``, ``nvfp4.py``, ``mxfp4.py``), which the kernel tests pin
  bit-exactly against it; ``BACKEND`` says which one ran.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

import torch

from ..candidates.schemes import LinearScheme
from ..kernels import fp8 as kfp8
from ..kernels import mxfp4 as kmx
from ..kernels import nvfp4 as knv

BACKEND = "compressed-tensors" if importlib.util.find_spec("compressed_tensors") else "layerbisect kernels"

# llmcompressor ``observers/helpers.FUSED_LAYER_NAMES``: siblings whose NVFP4 weight global scale is shared
FUSED_GROUPS: tuple[tuple[str, ...], ...] = (("gate_proj", "up_proj"), ("q_proj", "k_proj", "v_proj"),
                                            ("q_a_proj", "kv_a_proj_with_mqa"), ("w1", "w3"))


def fused_groups(names: list[str]) -> list[list[str]]:
    """Module names grouped as llmcompressor fuses them (same parent, one of ``FUSED_GROUPS``)."""
    out = []
    by_parent: dict[str, dict[str, str]] = {}
    for n in names:
        parent, _, leaf = n.rpartition(".")
        by_parent.setdefault(parent, {})[leaf] = n
    for kids in by_parent.values():
        for group in FUSED_GROUPS:
            if all(g in kids for g in group):
                out.append([kids[g] for g in group])
    return out


def _ct_args(scheme: LinearScheme):  # -> (weights QuantizationArgs, input QuantizationArgs | None)
    from compressed_tensors.quantization import QuantizationArgs

    w = scheme.weight
    if w == "fp8_tensor":
        wa = QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True)
    elif w == "fp8_channel":
        wa = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
    elif w == "fp8_block":
        wa = QuantizationArgs(num_bits=8, type="float", strategy="block", symmetric=True,
                              block_structure=list(scheme.block or (128, 128)))
    elif w == "nvfp4":
        wa = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16, symmetric=True,
                              scale_dtype=torch.float8_e4m3fn, zp_dtype=torch.float8_e4m3fn)
    elif w == "mxfp4":
        wa = QuantizationArgs(num_bits=4, type="float", strategy="group", group_size=32, symmetric=True,
                              scale_dtype=torch.uint8, zp_dtype=torch.uint8)
    else:
        raise ValueError(f"no producer recipe for weight kind {w!r}")
    ia = None
    if scheme.act == "fp8_static_tensor":
        ia = QuantizationArgs(num_bits=8, type="float", strategy="tensor", symmetric=True, dynamic=False)
    elif scheme.act == "nvfp4":
        ia = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16, symmetric=True,
                              dynamic="local", scale_dtype=torch.float8_e4m3fn, zp_dtype=torch.float8_e4m3fn)
    return wa, ia


def _flatten_weight(w: torch.Tensor, scheme: LinearScheme) -> torch.Tensor:
    """llmcompressor ``_flatten_weight``: (1, *qparam_shape, group elements), zero-padded blocks."""
    if scheme.weight == "fp8_tensor":
        return w.reshape(1, 1, -1)
    if scheme.weight == "fp8_channel":
        return w.unsqueeze(-2).unsqueeze(0)
    if scheme.weight in ("nvfp4", "mxfp4"):
        return w.unflatten(-1, (-1, scheme.group_size or (16 if scheme.weight == "nvfp4" else 32))).unsqueeze(0)
    bh, bw = scheme.block or (128, 128)
    r, c = w.shape
    pr, pc = (-r) % bh, (-c) % bw
    if pr or pc:
        w = torch.nn.functional.pad(w, (0, pc, 0, pr))
    r, c = w.shape
    return w.reshape(r // bh, bh, c // bw, bw).transpose(1, 2).flatten(-2, -1).unsqueeze(0)


def weight_global_scale(weights: list[torch.Tensor]) -> torch.Tensor:
    """NVFP4 global scale of a fused group: ``generate_gparam`` of the group's absmax (a divisor, 448·6/amax)."""
    amax = torch.stack([w.abs().amax().float() for w in weights]).amax().to(weights[0].dtype)
    if BACKEND == "compressed-tensors":
        from compressed_tensors.quantization.utils import generate_gparam

        return generate_gparam(-amax.reshape(1), amax.reshape(1))
    return knv.global_scale_from_amax(amax)


def quantize_weight(weight: torch.Tensor, scheme: LinearScheme, *, dtype: torch.dtype = torch.bfloat16,
                    global_scale: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """A (out, in) float weight → the checkpoint tensors a correct producer run writes for ``scheme``.

    FP8: ``weight`` (float8_e4m3fn), ``weight_scale``; NVFP4: ``weight_packed``, ``weight_scale`` (e4m3),
    ``weight_global_scale`` (float32, shared by fused siblings when given); MXFP4: ``weight_packed``,
    ``weight_scale`` (uint8 E8M0). ``dtype``: the dtype the producer saw the weight in.
    """
    w = weight.detach().to(dtype)
    if scheme.weight == "nvfp4" and global_scale is None:
        global_scale = weight_global_scale([w])
    if BACKEND != "compressed-tensors":
        return _quantize_weight_kernels(w, scheme, global_scale)
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    wa, _ = _ct_args(scheme)
    flat = _flatten_weight(w, scheme)
    mins, maxs = torch.amin(flat, dim=(0, -1)), torch.amax(flat, dim=(0, -1))
    gs = global_scale if scheme.weight == "nvfp4" else None
    scale, zp = calculate_qparams(mins, maxs, wa, global_scale=gs)
    sd = {"weight": w, "weight_scale": scale, "weight_zero_point": zp}
    if gs is not None:
        sd["weight_global_scale"] = gs
    comp = {"nvfp4": NVFP4PackedCompressor, "mxfp4": MXFP4PackedCompressor}.get(scheme.weight,
                                                                             FloatQuantizationCompressor)
    out = comp.compress(sd, QuantizationScheme(targets=["Linear"], weights=wa))
    return {k: v.detach() for k, v in out.items() if k != "weight_zero_point"}


def _quantize_weight_kernels(w: torch.Tensor, scheme: LinearScheme,
                             gs: torch.Tensor | None) -> dict[str, torch.Tensor]:
    if scheme.weight.startswith("fp8"):
        block = {"fp8_tensor": (None, None), "fp8_channel": (1, None)}.get(scheme.weight, scheme.block or (128, 128))
        flat = _flatten_weight(w, scheme)
        amax = torch.maximum(flat.amax(dim=(0, -1)), -flat.amin(dim=(0, -1))).clamp(min=0)
        scale = amax / kfp8.FP8_MAX
        scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(scale.dtype).eps), scale)
        q, _ = kfp8.quantize_fp8(w, block, scale.reshape(-1) if scheme.weight == "fp8_tensor" else scale)
        return {"weight": q, "weight_scale": scale.reshape(1) if scheme.weight == "fp8_tensor" else scale}
    if scheme.weight == "nvfp4":
        assert gs is not None
        codes, s8, _ = knv.quantize_nvfp4(w.float(), gs)
        return {"weight_packed": knv.pack_fp4(codes), "weight_scale": s8, "weight_global_scale": gs.float()}
    codes, e = kmx.quantize_mxfp4(w)
    return {"weight_packed": knv.pack_fp4(codes), "weight_scale": e}


def activation_tensors(x: torch.Tensor, scheme: LinearScheme, *, dtype: torch.dtype = torch.bfloat16
                       ) -> dict[str, torch.Tensor]:
    """Static activation scales calibrated on ``x`` (the reference's input of the linear, (T, in)).

    FP8 static: ``input_scale`` = amax/448 (the min/max observer over one sample, compressed-tensors
    ``calculate_qparams``); NVFP4: ``input_global_scale`` = 448·6/amax (``generate_gparam``). Dynamic schemes
    need nothing: {}.
    """
    xs = x.detach().to(dtype)
    amax = xs.abs().amax().reshape(1)
    if scheme.act == "fp8_static_tensor":
        if BACKEND == "compressed-tensors":
            from compressed_tensors.quantization.utils import calculate_qparams

            _, ia = _ct_args(scheme)
            scale, _ = calculate_qparams(-amax, amax, ia)
            return {"input_scale": scale.reshape(1)}
        s = amax / kfp8.FP8_MAX
        return {"input_scale": torch.where(s == 0, torch.full_like(s, torch.finfo(s.dtype).eps), s)}
    if scheme.act == "nvfp4":
        if BACKEND == "compressed-tensors":
            from compressed_tensors.quantization.utils import generate_gparam

            return {"input_global_scale": generate_gparam(-amax.float(), amax.float())}
        return {"input_global_scale": knv.global_scale_from_amax(amax.float())}
    return {}


def quantize_linears(weights: Mapping[str, torch.Tensor], schemes: Mapping[str, LinearScheme],
                     inputs: Mapping[str, torch.Tensor] | None = None, *, dtype: torch.dtype = torch.bfloat16,
                     fused: list[list[str]] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Checkpoint tensors for every module: weights, fused NVFP4 global scales, static activation scales.

    ``fused``: groups of modules that share an NVFP4 weight global scale (as the producer wrote them).
    """
    gscale: dict[str, torch.Tensor] = {}
    for group in fused or []:
        if all(schemes[n].weight == "nvfp4" for n in group if n in schemes) and all(n in weights for n in group):
            g = weight_global_scale([weights[n].to(dtype) for n in group])
            gscale.update({n: g for n in group})
    out = {}
    for name, w in weights.items():
        s = schemes[name]
        t = quantize_weight(w, s, dtype=dtype, global_scale=gscale.get(name))
        if inputs is not None and name in inputs:
            t.update(activation_tensors(inputs[name], s, dtype=dtype))
        out[name] = t
    return out


def model_dtype(config: Mapping) -> torch.dtype:
    """The dtype the producer saw the weights in (config.json ``torch_dtype``/``dtype``), BF16 by default."""
    name = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16").replace("torch.", "")
    return {"float32": torch.float32, "float16": torch.float16}.get(name, torch.bfloat16)


__all__ = ["BACKEND", "activation_tensors", "fused_groups", "model_dtype", "quantize_linears", "quantize_weight",
           "weight_global_scale"]
