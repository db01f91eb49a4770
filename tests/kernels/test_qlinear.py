"""QuantLinear on synthetic tensors: input errors, what-if switches, row permutation, ModelOpt conventions."""

from __future__ import annotations

import pytest
import torch

from layerbisect.candidates.qlinear import QuantOptions, build_linear, observing
from layerbisect.candidates.schemes import LinearScheme
from layerbisect.errors import InputError
from layerbisect.kernels import fp8, nvfp4

from .tolerances import TOL, rel_err

FP8_STATIC = LinearScheme("fp8_tensor", "fp8_static_tensor", None, None, "compressed-tensors")
FP8_BLOCK = LinearScheme("fp8_block", "fp8_dynamic_group", (128, 128), None, "compressed-tensors", 128)
NV_CT = LinearScheme("nvfp4", "nvfp4", None, 16, "compressed-tensors", 16)
NV_MO = LinearScheme("nvfp4", "nvfp4", None, 16, "modelopt", 16)


def _fp8_tensors(out_f=256, in_f=640, block=(None, None), input_scale=0.01, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(out_f, in_f) * 0.02
    q, s = fp8.quantize_fp8(w, block)
    t = {"weight": q, "weight_scale": s.to(torch.bfloat16).reshape(-1) if block == (None, None) else s}
    if input_scale is not None:
        t["input_scale"] = torch.tensor([input_scale], dtype=torch.bfloat16)
    return t


def _nv_tensors(out_f=64, in_f=128, modelopt=False, in_amax=3.0, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(out_f, in_f) * 0.02
    gs = nvfp4.global_scale_from_amax(w.abs().amax())
    codes, s8, _ = nvfp4.quantize_nvfp4(w, gs)
    packed = nvfp4.pack_fp4(codes)
    igs = nvfp4.global_scale_from_amax(torch.tensor(in_amax))
    if modelopt:
        return {"weight": packed, "weight_scale": s8, "weight_scale_2": (1.0 / gs).reshape(()),
                "input_scale": (1.0 / igs).reshape(())}
    return {"weight_packed": packed, "weight_scale": s8, "weight_global_scale": gs, "input_global_scale": igs}


# --- input errors -------------------------------------------------------------------------------------------------


def test_missing_tensor_names_module_and_tensor():
    t = _fp8_tensors()
    del t["weight_scale"]
    with pytest.raises(InputError, match="needs tensor 'weight_scale' \\(missing\\)") as ei:
        build_linear("model.layers.0.self_attn.q_proj", t, FP8_STATIC, QuantOptions())
    assert ei.value.where == "model.layers.0.self_attn.q_proj"


def test_static_scheme_without_input_scale():
    with pytest.raises(InputError, match="'input_scale' \\(missing\\)"):
        build_linear("m", _fp8_tensors(input_scale=None), FP8_STATIC, QuantOptions())


def test_wrong_shapes_and_dtypes():
    t = _nv_tensors()
    t["weight_scale"] = t["weight_scale"][:, :4]
    with pytest.raises(InputError, match=r"weight_scale has shape \(64,4\), expected \(out, in/16\)"):
        build_linear("m", t, NV_CT, QuantOptions())
    t = _nv_tensors()
    t["weight_shape"] = torch.tensor([64, 256])
    with pytest.raises(InputError, match=r"weight_packed has shape \(64,64\), expected \(out, in/2\) = \(64, 128\)"):
        build_linear("m", t, NV_CT, QuantOptions())
    t = _fp8_tensors(block=(128, 128))
    t["weight_scale"] = t["weight_scale"][:1]
    with pytest.raises(InputError, match=r"expected \(ceil\(out/128\), ceil\(in/128\)\) = \(2, 5\)"):
        build_linear("m", t, FP8_BLOCK, QuantOptions())
    t = _fp8_tensors()
    t["weight"] = t["weight"].float()
    with pytest.raises(InputError, match="dtype torch.float32, expected torch.float8_e4m3fn"):
        build_linear("m", t, FP8_STATIC, QuantOptions())


def test_native_without_cuda_is_an_input_error():
    if torch.cuda.is_available():
        pytest.skip("has CUDA")
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        build_linear("m", _fp8_tensors(), FP8_STATIC, QuantOptions(impl="native"))


# --- what-if switches ---------------------------------------------------------------------------------------------


def test_fp8_act_quant_switches():
    t = _fp8_tensors(input_scale=0.004)  # calibrated amax ~1.8
    x = torch.randn(4, 640) * 0.5
    x[0, 0] = 10.0  # beyond the static range: saturates
    lin = {m: build_linear("m", t, FP8_STATIC, QuantOptions(act_quant=m)) for m in ("checkpoint", "static",
                                                                                   "dynamic", "off")}
    with observing(lin["static"]), observing(lin["dynamic"]):
        y = {m: lin[m](x) for m in lin}
    assert torch.equal(y["checkpoint"], y["static"])
    assert lin["off"].activation_stats()["calls"] == 0  # counted only while observed
    w = lin["off"].dequantized_weight().double()
    assert rel_err(y["off"], x.double() @ w.T) <= TOL["emulate_vs_f64"]
    qd, sd = fp8.quantize_fp8(x, (1, None))
    assert rel_err(y["dynamic"], fp8.dequantize_fp8(qd, sd, (1, None)).double() @ w.T) <= TOL["emulate_vs_f64"]
    st = lin["static"].activation_stats()
    assert st["saturated"] == 1 and st["act_mode"] == "fp8_static_tensor" and st["input_amax"] == 10.0
    assert lin["dynamic"].activation_stats()["act_mode"] == "fp8_dynamic_token"


def test_static_what_if_needs_static_scale():
    with pytest.raises(InputError, match="act_quant='static' needs tensor 'input_scale'"):
        build_linear("m", _fp8_tensors(block=(128, 128), input_scale=None), FP8_BLOCK,
                     QuantOptions(act_quant="static"))


def test_nvfp4_observed_global_scale_fixes_overflow():
    t = _nv_tensors(in_amax=0.01)  # seed bug: calibrated on a tiny amax
    x = torch.randn(3, 128) * 4
    ckpt = build_linear("m", t, NV_CT, QuantOptions())
    obs = build_linear("m", t, NV_CT, QuantOptions(nvfp4_act_global_scale="observed"))
    with observing(ckpt), observing(obs):
        y_ckpt, y_obs = ckpt(x), obs(x)
    exact = x.double() @ ckpt.dequantized_weight().double().T
    assert ckpt.activation_stats()["block_scale_overflow"] == ckpt.activation_stats()["blocks"] == 24
    assert obs.activation_stats()["block_scale_overflow"] == 0
    assert rel_err(y_obs, exact) < 0.2 < rel_err(y_ckpt, exact)


def test_modelopt_nvfp4_matches_compressed_tensors_twin():
    ct = _nv_tensors(modelopt=False)
    mo = _nv_tensors(modelopt=True)
    a = build_linear("m", ct, NV_CT, QuantOptions())
    b = build_linear("m", mo, NV_MO, QuantOptions())
    # weight_scale_2 = 1/gs (multiplier) vs gs (divisor): equal up to the fp32 rounding of 1/gs
    assert rel_err(b.dequantized_weight(), a.dequantized_weight()) < 1e-6
    x = torch.randn(5, 128)
    assert rel_err(b(x), a(x)) < 1e-5


# --- permutation --------------------------------------------------------------------------------------------------


def _rope_perm(n_rows: int, head_dim: int) -> torch.Tensor:
    """llama.cpp's Q/K permutation inside each head: interleaved pairs -> halves."""
    idx = torch.arange(n_rows).reshape(-1, 2, head_dim // 2).transpose(1, 2).reshape(-1)
    return idx


@pytest.mark.parametrize("kind", ["fp8_block", "fp8_channel", "nvfp4"])
def test_permute_out_rows_keeps_scales_with_rows(kind):
    x = torch.randn(3, 640 if kind != "nvfp4" else 128)
    if kind == "nvfp4":
        lin = build_linear("m", _nv_tensors(out_f=256), NV_CT, QuantOptions(act_quant="off"))
    elif kind == "fp8_block":
        lin = build_linear("m", _fp8_tensors(block=(128, 128)), FP8_BLOCK, QuantOptions())
    else:
        t = _fp8_tensors(block=(1, None), input_scale=None)
        lin = build_linear("m", t, LinearScheme("fp8_channel", "fp8_dynamic_token", None, None, "compressed-tensors"),
                           QuantOptions())
    perm = _rope_perm(256, 128)
    w0, y0 = lin.dequantized_weight(), lin(x)
    lin.permute_out_rows(perm)
    assert torch.equal(lin.dequantized_weight(), w0[perm])
    assert torch.equal(lin(x), y0[:, perm])


def test_permutation_that_splits_a_scale_block_raises():
    lin = build_linear("m", _fp8_tensors(block=(128, 128)), FP8_BLOCK, QuantOptions())
    perm = torch.arange(256).roll(64)
    with pytest.raises(InputError, match="splits 128-row weight-scale blocks"):
        lin.permute_out_rows(perm)


def test_bias_and_leading_dims():
    t = _fp8_tensors()
    t["bias"] = torch.randn(256, dtype=torch.bfloat16)
    lin = build_linear("m", t, FP8_STATIC, QuantOptions(act_quant="off"))
    x = torch.randn(2, 3, 640)
    y = lin(x)
    assert y.shape == (2, 3, 256) and y.dtype == torch.float32
    ref = x.double() @ lin.dequantized_weight().double().T + t["bias"].double()
    assert rel_err(y, ref) <= TOL["emulate_vs_f64"]
