"""Quantized linear layers for the candidate runner: exact CPU emulation, native GPU kernels behind ``impl``.

``build_linear(name, tensors, scheme, options)`` turns one module's checkpoint tensors (prefix stripped) into a
``QuantLinear`` whose ``forward`` takes float32 ``(..., in)`` and returns float32 ``(..., out)``.

Tensor names and conventions, restated where the code meets the external formats
    compressed-tensors FP8 (``float-quantized``): ``weight`` float8_e4m3fn (out, in); ``weight_scale`` bf16/fp32:
        (1,) per-tensor, (out, 1) per-channel, (ceil(out/128), ceil(in/128)) block; ``input_scale`` (1,) for
        static activations. Multipliers: ``w = q * weight_scale``; activations ``q = fp8(clamp(x / input_scale))``.
    compressed-tensors NVFP4 (``nvfp4-pack-quantized``): ``weight_packed`` uint8 (out, in/2), ``weight_scale``
        e4m3 (out, in/16), ``weight_global_scale`` f32 (1,), ``input_global_scale`` f32 (1,) (W4A4 only).
        Global scales are **divisors**: ``w = e2m1 * (weight_scale / weight_global_scale)``.
    compressed-tensors MXFP4 (``mxfp4-pack-quantized``): ``weight_packed`` uint8 (out, in/2) packed like NVFP4,
        ``weight_scale`` uint8 (out, in/32) E8M0 biased exponents: ``w = e2m1 * 2**(weight_scale - 127)``; no global
        scale; MXFP4 (W4A4) quantizes activations dynamically the same way (``kernels/mxfp4.py``).
    ModelOpt FP8: ``weight`` e4m3, ``weight_scale`` f32 scalar, ``input_scale`` f32 scalar (multipliers).
    ModelOpt NVFP4: ``weight`` uint8 (out, in/2) packed like compressed-tensors, ``weight_scale`` e4m3 (out, in/16),
        ``weight_scale_2`` f32 scalar and ``input_scale`` f32 scalar, both **multipliers** = amax/(448*6):
        ``w = e2m1 * (weight_scale * weight_scale_2)``; activation global scale (divisor) = ``1 / input_scale``.

What-if switches (``QuantOptions``)
    ``act_quant``: "checkpoint" does what the checkpoint declares; "static" forces the checkpoint's static input
    scales (FP8 ``input_scale``; NVFP4 static global scale); "dynamic" forces dynamic per-token FP8 activations
    (NVFP4: a global scale observed on the current input, 448*6/amax); "off" leaves activations unquantized.
    ``nvfp4_act_global_scale``: "observed" replaces the checkpoint's NVFP4 input global scale by the observed one.
    ``norm_act_quant``: "unscaled" emulates an engine that FP8-quantizes the residual-writing norms' outputs per
    token and never applies the scale back (seed 000; ``candidates/whatif_norms.py``).

Emulation reproduces each quantization step of the producer in FP32 and matmuls in FP32. ``impl="native"``
uses ``kernels.fp8.fp8_gemm`` (scaled_mm, else Triton) and ``kernels.nvfp4.nvfp4_gemm(impl="triton")`` on CUDA;
activation quantization runs as the same PyTorch code on the GPU, so only the GEMM differs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch

from layerbisect.candidates.schemes import LinearScheme
from layerbisect.errors import InputError
from layerbisect.kernels import fp8 as kfp8
from layerbisect.kernels import mxfp4 as kmx
from layerbisect.kernels import nvfp4 as knv
from layerbisect.kernels import on_device

ActMode = Literal["none", "fp8_static_tensor", "fp8_dynamic_token", "fp8_dynamic_group", "nvfp4", "mxfp4"]


@dataclass
class QuantOptions:
    act_quant: Literal["checkpoint", "static", "dynamic", "off"] = "checkpoint"
    nvfp4_act_global_scale: Literal["checkpoint", "observed"] = "checkpoint"
    impl: Literal["emulate", "native"] = "emulate"
    # "unscaled": residual-writing and final norm outputs FP8-quantized per token, scale dropped (whatif_norms.py)
    norm_act_quant: Literal["off", "unscaled"] = "off"
    compute_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # the candidate's arithmetic (compute_dtype.py)


def _shape(t: torch.Tensor) -> str:
    return "(" + ",".join(str(d) for d in t.shape) + ")"


def _need(name: str, tensors: dict[str, torch.Tensor], key: str, scheme_label: str) -> torch.Tensor:
    if key not in tensors:
        raise InputError(name, f"scheme {scheme_label} needs tensor {key!r} (missing)")
    return tensors[key]


def _check_shape(name: str, key: str, t: torch.Tensor, expected: tuple[int, ...], label: str) -> None:
    if tuple(t.shape) != expected:
        raise InputError(name, f"{key} has shape {_shape(t)}, expected {label} = {expected}")


def _check_dtype(name: str, key: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise InputError(name, f"{key} has dtype {t.dtype}, expected {dtype}")


def _scalar(name: str, key: str, t: torch.Tensor) -> torch.Tensor:
    if t.numel() != 1:
        raise InputError(name, f"{key} has shape {_shape(t)}, expected a scalar or (1,)")
    return t.reshape(1).to(torch.float32)


class QuantLinear(torch.nn.Module):
    """Base: bias, activation statistics, the forward skeleton. Subclasses implement the weight format.

    Activation statistics (``activation_stats``: calls, tokens, input amax, non-finite inputs, FP8 static-scale
    saturations, NVFP4 block-scale overflows) are counted only while ``observe`` is true (``observing``): each
    count is a number brought to the host, a wait for the device on every call, and the pipeline reads none of
    them (its activation audit probes the reference's inputs itself: ``audit/activations.py``).
    """

    in_features: int
    out_features: int
    scheme: LinearScheme
    observe: bool = False

    def __init__(self, module_name: str, scheme: LinearScheme, options: QuantOptions, in_features: int,
                 out_features: int, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.module_name = module_name
        self.scheme = scheme
        self.options = options
        self.in_features = in_features
        self.out_features = out_features
        if bias is not None:
            if tuple(bias.shape) != (out_features,):
                raise InputError(module_name, f"bias has shape {_shape(bias)}, expected (out,) = ({out_features},)")
            self.register_buffer("bias", bias.to(torch.float32))
        else:
            self.bias = None
        self._stats: dict = {"calls": 0, "tokens": 0, "input_amax": 0.0, "input_nonfinite": 0}

    # -- statistics ------------------------------------------------------------------------------------------------
    def _observe(self, x2: torch.Tensor) -> None:
        if not self.observe:
            return
        st = self._stats
        st["calls"] += 1
        st["tokens"] += int(x2.shape[0])
        finite = torch.isfinite(x2)
        st["input_nonfinite"] += int((~finite).sum())
        if x2.numel():
            amax = float(torch.where(finite, x2.abs(), torch.zeros_like(x2)).max())
            st["input_amax"] = max(st["input_amax"], amax)

    def activation_stats(self) -> dict:
        """Observed input statistics so far plus what the activation quantizer did with them."""
        st = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in self._stats.items()}  # static scales
        if (a := st.get("static_input_global_scale")) is not None:
            st["static_implied_amax"] = knv.FP8_MAX * knv.E2M1_MAX / a if a else math.inf
        return dict(st, module=self.module_name, scheme=self.scheme, act_mode=self.act_mode)

    def reset_stats(self) -> None:
        keep = {"calls": 0, "tokens": 0, "input_amax": 0.0, "input_nonfinite": 0}
        self._stats = keep | {k: v for k, v in self._stats.items() if k.startswith("static_")}

    # -- forward ---------------------------------------------------------------------------------------------------
    act_mode: ActMode = "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.module_name}: input has {x.shape[-1]} features, expected {self.in_features}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).to(torch.float32)  # (T, in)
        self._observe(x2)
        with on_device(x2.device):  # called from another device's thread (localization, two GPUs)
            y = self._matmul(x2)  # (T, out) float32
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dequantized_weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _weight_fp32(self) -> torch.Tensor:
        """The dequantized weight for the emulated GEMM, kept after the first call on the CPU.

        On the CPU the dequantization (an FP8 or FP4 decode and a scale, element by element) costs
        more than the matmul it feeds, and a run calls each linear once per decode step and once
        per pass: the FP32 copy is made once (what a resident FP32 side holds anyway; a streamed
        layer drops it with the layer). On a GPU it is recomputed per call (memory-bound, cheap).
        The operands are the same bits either way, so the result is too. ``keep_weight = False`` (the
        expected lane's modules: three passes, then dropped) decodes on every call instead, so no FP32 copy
        outlives the call.
        """
        w = self._w_dq
        if w is not None and w.device == next(self.buffers()).device:  # a module moved since drops it
            return w
        w = self.dequantized_weight()
        self._w_dq = w if w.device.type == "cpu" and self.keep_weight else None
        return w

    keep_weight = True

    def release_kept_weight(self) -> None:
        """Drop the kept FP32 copy (``_weight_fp32``); the next call decodes again: same bits, less memory."""
        self._w_dq = None

    def kept_weight(self) -> torch.Tensor:
        """``dequantized_weight()``, or the copy the emulated GEMM keeps (``_weight_fp32``) when there is one on
        the module's device: the same bits without decoding again. Read it, never modify it."""
        w = getattr(self, "_w_dq", None)
        if w is not None and w.device == next(self.buffers()).device:
            return w
        return self.dequantized_weight()

    def permute_out_rows(self, perm: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _permute_bias(self, perm: torch.Tensor) -> None:
        if self.bias is not None:
            self.bias = self.bias[perm]

    def _check_perm(self, perm: torch.Tensor) -> torch.Tensor:
        perm = torch.as_tensor(perm, dtype=torch.long)
        if perm.shape != (self.out_features,) or not torch.equal(perm.sort().values, torch.arange(self.out_features)):
            raise ValueError(f"{self.module_name}: not a permutation of {self.out_features} output rows")
        return perm

    def extra_repr(self) -> str:
        return (f"{self.module_name}: in={self.in_features} out={self.out_features} weight={self.scheme.weight} "
                f"act={self.act_mode} impl={self.options.impl}")


# ---------------------------------------------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------------------------------------------


class DenseLinear(QuantLinear):
    def __init__(self, module_name: str, weight: torch.Tensor, scheme: LinearScheme, options: QuantOptions,
                 bias: torch.Tensor | None) -> None:
        if weight.ndim != 2:
            raise InputError(module_name, f"weight has shape {_shape(weight)}, expected (out, in)")
        super().__init__(module_name, scheme, options, weight.shape[1], weight.shape[0], bias)
        self.register_buffer("weight", weight.to(torch.float32))

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        return x2 @ self.weight.T

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.clone()

    def permute_out_rows(self, perm: torch.Tensor) -> None:
        perm = self._check_perm(perm)
        self.weight = self.weight[perm]
        self._permute_bias(perm)


# ---------------------------------------------------------------------------------------------------------------
# FP8
# ---------------------------------------------------------------------------------------------------------------


def _resolve_act(scheme: LinearScheme, options: QuantOptions, has_static: bool, name: str,
                 static_key: str) -> ActMode:
    mode = options.act_quant
    if mode == "off":
        return "none"
    if mode == "checkpoint":
        act = scheme.act
    elif mode == "static":
        if not has_static:
            raise InputError(name, f"act_quant='static' needs tensor {static_key!r} (missing)")
        act = "nvfp4" if scheme.weight == "nvfp4" else "fp8_static_tensor"
    elif mode == "dynamic":
        act = {"nvfp4": "nvfp4", "mxfp4": "mxfp4"}.get(scheme.weight, "fp8_dynamic_token")
    else:
        raise InputError(name, f"unknown act_quant {mode!r}")
    if act == "fp8_static_tensor" and not has_static:
        raise InputError(name, f"scheme {scheme.weight}/{scheme.act} needs tensor {static_key!r} (missing)")
    return act


class FP8Linear(QuantLinear):
    """FP8 E4M3 weights (per-tensor / per-channel / block) with optional FP8 activations."""

    def __init__(self, module_name: str, tensors: dict[str, torch.Tensor], scheme: LinearScheme,
                 options: QuantOptions) -> None:
        label = scheme.weight
        w = _need(module_name, tensors, "weight", label)
        _check_dtype(module_name, "weight", w, kfp8.FP8_DTYPE)
        if w.ndim != 2:
            raise InputError(module_name, f"weight has shape {_shape(w)}, expected (out, in)")
        out_f, in_f = w.shape
        super().__init__(module_name, scheme, options, in_f, out_f, tensors.get("bias"))
        s = _need(module_name, tensors, "weight_scale", label)
        if scheme.weight == "fp8_tensor":
            s = _scalar(module_name, "weight_scale", s).reshape(1, 1)
            self.w_block: tuple[int | None, int | None] = (None, None)
        elif scheme.weight == "fp8_channel":
            if s.numel() != out_f or s.ndim > 2 or (s.ndim == 2 and s.shape[1] != 1):
                raise InputError(module_name, f"weight_scale has shape {_shape(s)}, expected (out, 1) = ({out_f}, 1)")
            s = s.reshape(out_f, 1)
            self.w_block = (1, None)
        elif scheme.weight == "fp8_block":
            bh, bw = scheme.block or (128, 128)
            exp = (math.ceil(out_f / bh), math.ceil(in_f / bw))
            _check_shape(module_name, "weight_scale", s, exp, f"(ceil(out/{bh}), ceil(in/{bw}))")
            self.w_block = (bh, bw)
        else:
            raise InputError(module_name, f"FP8Linear cannot load weight kind {scheme.weight!r}")
        # Non-finite scales are loaded as they are: the run shows where the NaN surfaces, which is the diagnosis.
        self.register_buffer("weight_q", w)
        self.register_buffer("weight_scale", s.to(torch.float32))  # bf16 -> f32 is exact
        static = tensors.get("input_scale")
        self.act_mode = _resolve_act(scheme, options, static is not None, module_name, "input_scale")
        if self.act_mode == "fp8_static_tensor":
            self.register_buffer("input_scale", _scalar(module_name, "input_scale", static))
            self._stats["static_input_scale"] = self.input_scale  # read as a number by ``activation_stats``
            self._stats["saturated"] = 0
        else:
            self.input_scale = None
        self.act_group = scheme.act_group_size or 128
        self._w_dq: torch.Tensor | None = None

    def _act_block(self) -> tuple[int | None, int | None]:
        return {"fp8_static_tensor": (None, None), "fp8_dynamic_token": (1, None),
                "fp8_dynamic_group": (1, self.act_group)}[self.act_mode]

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        native = self.options.impl == "native"
        if self.act_mode == "none":
            if native:  # weight-only: dequantize once on the device, FP32 matmul
                if self._w_dq is None or self._w_dq.device != x2.device:
                    self._w_dq = self.dequantized_weight().to(x2.device)
                return x2 @ self._w_dq.T
            return x2 @ self._weight_fp32().T
        a_block = self._act_block()
        if self.act_mode == "fp8_static_tensor":
            if self.observe:
                self._stats["saturated"] += int((x2.abs() / self.input_scale > kfp8.FP8_MAX).sum())
            a_q, a_s = kfp8.quantize_fp8(x2, a_block, self.input_scale)
        else:
            a_q, a_s = kfp8.quantize_fp8(x2, a_block)
        if not native:  # kfp8.fp8_gemm_emulated, with the weight's dequantization kept (``_weight_fp32``)
            return kfp8.dequantize_fp8(a_q, a_s, a_block) @ self._weight_fp32().T
        kind = kfp8.classify_blocks(tuple(a_q.shape), a_block, tuple(self.weight_q.shape), self.w_block)
        if kind is not None and (kfp8.scaled_mm_supports(kind, torch.float32)
                                 or kfp8.scaled_mm_supports(kind, torch.bfloat16)):
            try:
                return kfp8.fp8_gemm(a_q, a_s, a_block, self.weight_q, self.weight_scale, self.w_block,
                                     impl="scaled_mm")
            except RuntimeError:  # cuBLAS rejects some shapes (e.g. blockwise with M % 128 != 0): use Triton
                pass
        return kfp8.fp8_gemm(a_q, a_s, a_block, self.weight_q, self.weight_scale, self.w_block, impl="triton")

    def dequantized_weight(self) -> torch.Tensor:
        return kfp8.dequantize_fp8(self.weight_q, self.weight_scale, self.w_block)

    def permute_out_rows(self, perm: torch.Tensor) -> None:
        perm = self._check_perm(perm)
        if self.scheme.weight == "fp8_channel":
            self.weight_scale = self.weight_scale[perm]
        elif self.scheme.weight == "fp8_block":
            bh = kfp8.resolve_block(tuple(self.weight_q.shape), self.w_block)[0]
            rows = []
            for i in range(math.ceil(self.out_features / bh)):
                src_blocks = torch.unique(perm[i * bh:(i + 1) * bh] // bh)
                if src_blocks.numel() != 1:
                    raise InputError(self.module_name, f"output permutation splits {bh}-row weight-scale blocks "
                                                       f"(destination block {i} takes rows from blocks "
                                                       f"{src_blocks.tolist()})")
                rows.append(int(src_blocks))
            # a partial last block can only be fed by itself: the check above already guarantees it (row counts)
            self.weight_scale = self.weight_scale[torch.tensor(rows)]
        self.weight_q = self.weight_q[perm]
        self._w_dq = None
        self._permute_bias(perm)


# ---------------------------------------------------------------------------------------------------------------
# NVFP4
# ---------------------------------------------------------------------------------------------------------------


class NVFP4Linear(QuantLinear):
    """NVFP4 weights (compressed-tensors or ModelOpt) with optional NVFP4 activations."""

    def __init__(self, module_name: str, tensors: dict[str, torch.Tensor], scheme: LinearScheme,
                 options: QuantOptions) -> None:
        modelopt = scheme.source == "modelopt"
        label = f"nvfp4 ({scheme.source})"
        packed_key = "weight" if modelopt else "weight_packed"
        packed = _need(module_name, tensors, packed_key, label)
        _check_dtype(module_name, packed_key, packed, torch.uint8)
        if packed.ndim != 2:
            raise InputError(module_name, f"{packed_key} has shape {_shape(packed)}, expected (out, in/2)")
        out_f, in_f = packed.shape[0], packed.shape[1] * 2
        if "weight_shape" in tensors:
            ws = tuple(int(v) for v in tensors["weight_shape"].reshape(-1).tolist())
            if len(ws) != 2:
                raise InputError(module_name, f"weight_shape holds {ws}, expected (out, in)")
            out_f, in_f = ws
            _check_shape(module_name, packed_key, packed, (out_f, in_f // 2), "(out, in/2)")
        if in_f % 16:
            raise InputError(module_name, f"NVFP4 needs in_features divisible by 16, got {in_f}")
        super().__init__(module_name, scheme, options, in_f, out_f, tensors.get("bias"))
        s = _need(module_name, tensors, "weight_scale", label)
        _check_dtype(module_name, "weight_scale", s, torch.float8_e4m3fn)
        _check_shape(module_name, "weight_scale", s, (out_f, in_f // 16), "(out, in/16)")
        gkey = "weight_scale_2" if modelopt else "weight_global_scale"
        g = _scalar(module_name, gkey, _need(module_name, tensors, gkey, label))
        # A non-finite or zero global scale is loaded as stored: audit/scales.py reports it as a critical
        # finding named by tensor, and the run shows where it surfaces.
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", s)
        self.register_buffer("weight_global", g)  # a buffer so that .to(device) moves it
        self.w_convention: str = "multiply" if modelopt else "divide"
        # activation global scale as a divisor (compressed-tensors convention): CT input_global_scale, or
        # 1 / ModelOpt input_scale (vLLM modelopt.py: input_global_scale_inv = 1 / input_scale)
        ikey = "input_scale" if modelopt else "input_global_scale"
        a_static = tensors.get(ikey)
        self.act_mode = _resolve_act(scheme, options, a_static is not None, module_name, ikey)
        if a_static is not None:
            a = _scalar(module_name, ikey, a_static)
            a = (1.0 / a) if modelopt else a
            self.register_buffer("input_global_scale", a)
            self._stats["static_input_global_scale"] = a  # read as a number by ``activation_stats``
        else:
            self.input_global_scale = None
        self.observed_global = (
            options.act_quant == "dynamic"
            or (options.act_quant != "static" and options.nvfp4_act_global_scale == "observed")
            or (self.act_mode == "nvfp4" and self.input_global_scale is None)
        )
        if self.act_mode == "nvfp4":
            self._stats.update(blocks=0, block_scale_overflow=0, last_global_scale=None)
        self._w_dq: torch.Tensor | None = None

    @property
    def w_global(self) -> knv.GlobalScale:
        return knv.GlobalScale(self.weight_global, self.w_convention)

    def _act_global_scale(self, x2: torch.Tensor) -> torch.Tensor:
        if self.observed_global:
            return knv.global_scale_from_amax(x2.abs().amax() if x2.numel() else torch.zeros(()))
        return self.input_global_scale

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        native = self.options.impl == "native"
        if self.act_mode == "none":
            if native:
                if self._w_dq is None or self._w_dq.device != x2.device:
                    self._w_dq = self.dequantized_weight().to(x2.device)
                return x2 @ self._w_dq.T
            return x2 @ self._weight_fp32().T
        gs = self._act_global_scale(x2).to(x2.device)
        codes, s8, overflow = knv.quantize_nvfp4(x2, gs)
        if self.observe:
            self._stats["blocks"] += int(overflow.numel())
            self._stats["block_scale_overflow"] += int(overflow.sum())
            self._stats["last_global_scale"] = float(gs)
        if not native:  # knv.nvfp4_gemm emulated, with the weight's dequantization kept (``_weight_fp32``)
            return knv.dequantize_nvfp4(codes, s8, knv.GlobalScale(gs, "divide")) @ self._weight_fp32().T
        return knv.nvfp4_gemm(codes, s8, knv.GlobalScale(gs, "divide"), self.weight_packed, self.weight_scale,
                              self.w_global, impl="triton")

    def dequantized_weight(self) -> torch.Tensor:
        return knv.dequantize_nvfp4_packed(self.weight_packed, self.weight_scale, self.w_global)

    def permute_out_rows(self, perm: torch.Tensor) -> None:
        perm = self._check_perm(perm)  # block scales are per row (1x16): rows move with their scales
        self.weight_packed = self.weight_packed[perm]
        self.weight_scale = self.weight_scale[perm]
        self._w_dq = None
        self._permute_bias(perm)


# ---------------------------------------------------------------------------------------------------------------
# MXFP4
# ---------------------------------------------------------------------------------------------------------------


class MXFP4Linear(QuantLinear):
    """MXFP4 weights (E2M1, 32-blocks, E8M0 scales; compressed-tensors) with optional dynamic MXFP4 activations."""

    def __init__(self, module_name: str, tensors: dict[str, torch.Tensor], scheme: LinearScheme,
                 options: QuantOptions) -> None:
        label = "mxfp4 (compressed-tensors)"
        packed = _need(module_name, tensors, "weight_packed", label)
        _check_dtype(module_name, "weight_packed", packed, torch.uint8)
        if packed.ndim != 2:
            raise InputError(module_name, f"weight_packed has shape {_shape(packed)}, expected (out, in/2)")
        out_f, in_f = packed.shape[0], packed.shape[1] * 2
        if in_f % kmx.BLOCK:
            raise InputError(module_name, f"MXFP4 needs in_features divisible by {kmx.BLOCK}, got {in_f}")
        super().__init__(module_name, scheme, options, in_f, out_f, tensors.get("bias"))
        s = _need(module_name, tensors, "weight_scale", label)
        _check_dtype(module_name, "weight_scale", s, torch.uint8)
        _check_shape(module_name, "weight_scale", s, (out_f, in_f // kmx.BLOCK), f"(out, in/{kmx.BLOCK})")
        self.register_buffer("weight_packed", packed)
        self.register_buffer("weight_scale", s)  # E8M0 biased exponents
        mode = options.act_quant
        if mode == "static":
            raise InputError(module_name, "act_quant='static': MXFP4 has no static activation scale")
        self.act_mode = "none" if mode == "off" else ("mxfp4" if mode == "dynamic" else scheme.act)  # type: ignore
        if self.act_mode not in ("none", "mxfp4"):
            raise InputError(module_name, f"MXFP4 weights with {self.act_mode} activations are not supported")
        self._w_dq: torch.Tensor | None = None

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        impl = "native" if self.options.impl == "native" else "emulate"
        if self.act_mode == "none":
            if impl == "native":
                if self._w_dq is None or self._w_dq.device != x2.device:
                    self._w_dq = self.dequantized_weight().to(x2.device)
                return x2 @ self._w_dq.T
            return kmx.mxfp4_gemm(None, self.weight_packed, self.weight_scale, x=x2, impl=impl)
        return kmx.mxfp4_gemm(kmx.quantize_mxfp4(x2), self.weight_packed, self.weight_scale, impl=impl)

    def dequantized_weight(self) -> torch.Tensor:
        return kmx.dequantize_mxfp4_packed(self.weight_packed, self.weight_scale)

    def permute_out_rows(self, perm: torch.Tensor) -> None:
        perm = self._check_perm(perm)  # scales are per row (1x32): rows move with their scales
        self.weight_packed = self.weight_packed[perm]
        self.weight_scale = self.weight_scale[perm]
        self._w_dq = None
        self._permute_bias(perm)


@contextmanager
def observing(module: torch.nn.Module) -> Iterator[None]:
    """Every ``QuantLinear`` in ``module`` (itself included) counts its activation statistics until the exit."""
    lins = [m for m in module.modules() if isinstance(m, QuantLinear)]
    before = [m.observe for m in lins]
    for m in lins:
        m.observe = True
    try:
        yield
    finally:
        for m, b in zip(lins, before):
            m.observe = b


# ---------------------------------------------------------------------------------------------------------------
# factory
# ---------------------------------------------------------------------------------------------------------------


def build_linear(module_name: str, tensors: dict[str, torch.Tensor], scheme: LinearScheme,
                 options: QuantOptions) -> QuantLinear:
    """One module's checkpoint tensors (prefix stripped) -> a QuantLinear for ``scheme``."""
    if options.impl == "native" and not torch.cuda.is_available():
        raise InputError(module_name, "impl='native' needs a CUDA GPU (use impl='emulate' on CPU)")
    if options.impl not in ("emulate", "native"):
        raise InputError(module_name, f"unknown impl {options.impl!r}")
    if scheme.weight == "dense":
        w = _need(module_name, tensors, "weight", "dense")
        if not torch.is_floating_point(w) or w.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise InputError(module_name, f"dense weight has dtype {w.dtype}; the checkpoint looks quantized")
        return DenseLinear(module_name, w, scheme, options, tensors.get("bias"))
    if scheme.weight in ("fp8_tensor", "fp8_channel", "fp8_block"):
        return FP8Linear(module_name, tensors, scheme, options)
    if scheme.weight == "nvfp4":
        return NVFP4Linear(module_name, tensors, scheme, options)
    if scheme.weight == "mxfp4":
        return MXFP4Linear(module_name, tensors, scheme, options)
    raise InputError(module_name, f"weight scheme {scheme.weight!r} is not supported by the candidate runner yet")


def release_kept_weights(modules: Iterable[torch.nn.Module], *, keep_after: bool = True) -> None:
    """``release_kept_weight`` on every module that keeps an FP32 copy (``QuantLinear._weight_fp32``); with
    ``keep_after=False`` they keep none from then on (each call decodes: the same bits, no copy held)."""
    for m in modules:
        release = getattr(m, "release_kept_weight", None)
        if release is not None:
            release()
            if not keep_after:
                m.keep_weight = False
