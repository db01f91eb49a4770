"""NVFP4 kernels: E2M1 table, nibble order and the global-scale convention pinned against compressed-tensors."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8, unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import dequantize, fake_quantize, quantize
from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4

from layerbisect.kernels import nvfp4

from .tolerances import TOL, bit_report, rel_err

NVFP4_ARGS = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16, symmetric=True,
                              scale_dtype=torch.float8_e4m3fn)


def test_e2m1_table_and_ties_to_even():
    # the producer's own rounding on every midpoint and a sweep
    x = torch.cat([torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.01, -0.25, -2.5, -5.0]),
                   torch.linspace(-6, 6, 2001)])
    got = nvfp4.round_to_e2m1(x)
    want = cast_to_fp4(x.clone())
    assert torch.equal(got, want), bit_report(got, want)
    assert nvfp4.round_to_e2m1(torch.tensor([0.25, 0.75, 1.25, 2.5, 5.0])).tolist() == [0.0, 1.0, 1.0, 2.0, 4.0]


def test_codes_cover_the_table():
    codes = torch.arange(16, dtype=torch.uint8)
    vals = nvfp4.codes_to_e2m1(codes)
    assert vals[:8].tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert vals[9:].tolist() == [-0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
    assert torch.equal(nvfp4.e2m1_to_codes(vals), codes)  # -0.0 keeps its sign bit (code 8)


def test_pack_nibble_order_matches_compressed_tensors():
    torch.manual_seed(0)
    vals = nvfp4.codes_to_e2m1(torch.randint(0, 16, (8, 64), dtype=torch.uint8))
    codes = nvfp4.e2m1_to_codes(vals)
    ours = nvfp4.pack_fp4(codes)
    theirs = pack_fp4_to_uint8(vals)
    assert torch.equal(ours, theirs), bit_report(ours.float(), theirs.float())
    # element 0 is the LOW nibble
    assert int(nvfp4.pack_fp4(torch.tensor([[1, 7]], dtype=torch.uint8))) == 0x71
    assert torch.equal(nvfp4.codes_to_e2m1(nvfp4.unpack_fp4(ours)),
                       unpack_fp4_from_uint8(theirs, 8, 64, dtype=torch.float32))


def _ct_quantize_weight(w: torch.Tensor):
    """The producer's recipe for a weight: global scale from amax, fp8 local scales, quantize."""
    gs = generate_gparam(w.amin(), w.amax())
    g = w.unflatten(-1, (-1, 16))
    scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), NVFP4_ARGS, global_scale=gs)
    q = quantize(w, scale, None, NVFP4_ARGS, global_scale=gs)
    return q, scale, gs


@pytest.mark.parametrize("shape", [(64, 256), (48, 640)])
def test_weight_quant_and_dequant_bit_exact_vs_compressed_tensors(shape):
    torch.manual_seed(1)
    w = torch.randn(shape) * 0.03
    w[0, :16] = 0.0  # an all-zero block: eps scale 0.125
    q_ct, s_ct, gs_ct = _ct_quantize_weight(w)
    gs = nvfp4.global_scale_from_amax(w.abs().amax())
    assert torch.equal(gs, gs_ct)
    codes, s8, overflow = nvfp4.quantize_nvfp4(w, gs)
    assert not overflow.any()
    assert torch.equal(s8.float(), s_ct.float()), bit_report(s8.float(), s_ct.float())
    assert torch.equal(nvfp4.codes_to_e2m1(codes), q_ct), bit_report(nvfp4.codes_to_e2m1(codes), q_ct)
    # dequant: the producer divides by the global scale (fp32), then multiplies
    dq = nvfp4.dequantize_nvfp4(codes, s8, nvfp4.GlobalScale(gs, "divide"))
    dq_ct = dequantize(q_ct, s8.float(), None, NVFP4_ARGS, dtype=torch.float32, global_scale=gs)
    assert torch.equal(dq, dq_ct), bit_report(dq, dq_ct)
    fq_ct = fake_quantize(w, s_ct, None, NVFP4_ARGS, global_scale=gs)
    assert torch.equal(dq, fq_ct), bit_report(dq, fq_ct)


def test_global_scale_is_a_divisor_not_a_multiplier():
    """The trap: multiplying by compressed-tensors' global scale instead of dividing is off by ~gs^2."""
    torch.manual_seed(2)
    w = torch.randn(16, 64) * 0.03
    gs = nvfp4.global_scale_from_amax(w.abs().amax())
    codes, s8, _ = nvfp4.quantize_nvfp4(w, gs)
    right = nvfp4.dequantize_nvfp4(codes, s8, nvfp4.GlobalScale(gs, "divide"))
    wrong = nvfp4.dequantize_nvfp4(codes, s8, nvfp4.GlobalScale(gs, "multiply"))
    assert rel_err(right, w) < 0.2
    assert rel_err(wrong, w) > 1e3
    # ModelOpt stores the reciprocal as a multiplier (weight_scale_2 = amax / 2688): same weight
    modelopt = nvfp4.dequantize_nvfp4(codes, s8, nvfp4.GlobalScale(1.0 / gs, "multiply"))
    assert rel_err(modelopt, right) < 1e-6


def test_activation_fake_quant_bit_exact_vs_producer_forward():
    torch.manual_seed(3)
    x = torch.randn(3, 5, 128) * 2
    x[1, 2, 16:32] = 0.0
    gs = torch.tensor([448.0 * 6 / 9.0])  # a calibrated (static) input_global_scale
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    args = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16, symmetric=True,
                            dynamic="local", scale_dtype=torch.float8_e4m3fn)
    s_ct, _ = compute_dynamic_scales_and_zp(x, args, module=None, global_scale=gs)
    fq_ct = fake_quantize(x, s_ct, None, args, global_scale=gs)
    dq, overflow = nvfp4.fake_quantize_nvfp4(x, gs)
    assert torch.equal(dq, fq_ct), bit_report(dq, fq_ct)
    assert not overflow.any()


def test_static_global_scale_too_large_saturates_and_is_counted():
    """Seed bug: a tiny calibrated amax -> huge input global scale -> local scale > 448 (NaN without saturation)."""
    x = torch.full((1, 32), 4.0)
    gs = torch.tensor([448.0 * 6 / 0.01])  # calibrated amax 0.01, real amax 4
    dq, overflow = nvfp4.fake_quantize_nvfp4(x, gs)
    assert overflow.all()
    assert torch.isfinite(dq).all()
    assert float(dq.abs().max()) == pytest.approx(6 * 448 / float(gs), rel=1e-6)  # clipped at 6 * 448 / gs


def test_emulated_gemm_vs_float64():
    torch.manual_seed(4)
    a, w = torch.randn(33, 640), torch.randn(96, 640) * 0.03
    ga, gw = nvfp4.global_scale_from_amax(a.abs().amax()), nvfp4.global_scale_from_amax(w.abs().amax())
    a_c, a_s, _ = nvfp4.quantize_nvfp4(a, ga)
    w_c, w_s, _ = nvfp4.quantize_nvfp4(w, gw)
    A, W = nvfp4.GlobalScale(ga), nvfp4.GlobalScale(gw)
    got = nvfp4.nvfp4_gemm(a_c, a_s, A, nvfp4.pack_fp4(w_c), w_s, W)
    ref = nvfp4.dequantize_nvfp4(a_c, a_s, A).double() @ nvfp4.dequantize_nvfp4(w_c, w_s, W).double().T
    err = rel_err(got, ref)
    assert err <= TOL["emulate_vs_f64"], f"rel err {err:.3e}"

