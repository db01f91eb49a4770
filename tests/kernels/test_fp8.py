"""FP8 E4M3 kernels: bit-exact against compressed-tensors' own quantize/dequantize; GEMMs against references."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import dequantize, fake_quantize, quantize

from layerbisect.kernels import fp8

from .tolerances import TOL, bit_report, rel_err


def test_cast_saturates_and_rounds_to_nearest_even():
    x = torch.tensor([448.0, 449.0, 1e6, -1e6, 17.0, 19.0, 0.0, -0.0, float("nan")])
    got = fp8.cast_to_fp8(x).float()
    # 17 lies between 16 and 18 (mantissa 000 vs 001): tie -> 16; 19 between 18 and 20: tie -> 20 (even)
    want = torch.tensor([448.0, 448.0, 448.0, -448.0, 16.0, 20.0, 0.0, -0.0, float("nan")])
    assert torch.equal(got[:-1], want[:-1]), bit_report(got, want)
    assert got[-1].isnan()


def test_every_e4m3_value_roundtrips():
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    vals = codes.float()
    finite = torch.isfinite(vals)
    assert torch.equal(fp8.cast_to_fp8(vals[finite]).view(torch.uint8), codes[finite].view(torch.uint8))


@pytest.mark.parametrize("shape", [(640, 256), (200, 300)], ids=["whole-blocks", "partial-blocks"])
def test_expand_scale_crops_partial_blocks(shape):
    s = torch.arange(1, 1 + 6 * 3, dtype=torch.float32)
    blk = (128, 128)
    ss = fp8.scale_shape(shape, blk)
    s = torch.arange(1, 1 + ss[0] * ss[1], dtype=torch.float32).reshape(ss)
    full = fp8.expand_scale(s, shape, blk)
    assert full.shape == shape
    r, c = shape[0] - 1, shape[1] - 1
    assert full[r, c] == s[r // 128, c // 128]
    assert full[0, 0] == s[0, 0]


def _ct_args(strategy: str, **kw) -> QuantizationArgs:
    return QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True, **kw)


@pytest.mark.parametrize(
    "strategy,block,ct_kw,shape",
    [
        ("tensor", (None, None), {}, (96, 640)),
        ("channel", (1, None), {}, (96, 640)),
        ("block", (128, 128), {"block_structure": [128, 128]}, (256, 640)),
        ("block", (128, 128), {"block_structure": [128, 128]}, (200, 704)),  # partial last blocks both ways
    ],
    ids=["tensor", "channel", "block", "block-partial"],
)
def test_quantize_dequant_bit_exact_vs_compressed_tensors(strategy, block, ct_kw, shape):
    torch.manual_seed(0)
    w = torch.randn(shape) * 0.05
    w[3, 5] = 0.0
    q, s = fp8.quantize_fp8(w, block)
    args = _ct_args(strategy, **ct_kw)
    s_ct = s.reshape(1) if strategy == "tensor" else s
    q_ct = quantize(w, s_ct, None, args, dtype=torch.float8_e4m3fn)
    assert torch.equal(q.view(torch.uint8), q_ct.view(torch.uint8)), bit_report(q.float(), q_ct.float())
    dq = fp8.dequantize_fp8(q, s, block)
    dq_ct = dequantize(q_ct, s_ct, None, args, dtype=torch.float32)
    assert torch.equal(dq, dq_ct), bit_report(dq, dq_ct)
    fq_ct = fake_quantize(w, s_ct, None, args)
    assert torch.equal(dq, fq_ct), bit_report(dq, fq_ct)


def test_bf16_scale_dequant_is_exact_and_matches_producer_bf16():
    torch.manual_seed(1)
    w = torch.randn(64, 256)
    s = (w.abs().amax(dim=1, keepdim=True) / 448).to(torch.bfloat16)  # checkpoints store bf16 scales
    q, _ = fp8.quantize_fp8(w, (1, None), s.float())
    dq = fp8.dequantize_fp8(q, s, (1, None))
    dq_ct = dequantize(q, s, None, _ct_args("channel"))  # producer's decompress: result in bf16
    assert dq_ct.dtype == torch.bfloat16
    assert torch.equal(dq.to(torch.bfloat16), dq_ct), bit_report(dq.to(torch.bfloat16), dq_ct)
    assert torch.equal(dq, q.double().mul(s.double()).float()), "fp8 * bf16 must be exact in fp32"


@pytest.mark.parametrize("block", [(1, None), (1, 128)], ids=["per-token", "per-1x128-group"])
def test_dynamic_activation_scales_match_producer(block):
    torch.manual_seed(2)
    x = torch.randn(2, 7, 384) * 3
    x[0, 1] = 0.0  # an all-zero token: scale guarded, output zero
    strategy = "token" if block == (1, None) else "group"
    kw = {} if strategy == "token" else {"group_size": 128}
    args = QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True, dynamic=True, **kw)
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    s_ct, _ = compute_dynamic_scales_and_zp(x, args, module=None)
    fq_ct = fake_quantize(x, s_ct, None, args)
    q, s = fp8.quantize_fp8(x.reshape(-1, 384), block)
    dq = fp8.dequantize_fp8(q, s, block).reshape(x.shape)
    assert torch.equal(dq, fq_ct), bit_report(dq, fq_ct)
    assert torch.equal(dq[0, 1], torch.zeros(384))


@pytest.mark.parametrize(
    "a_block,b_block,shape",
    [
        ((None, None), (None, None), (33, 640, 96)),
        ((1, None), (1, None), (33, 640, 96)),
        ((1, 128), (128, 128), (33, 704, 200)),
    ],
    ids=["tensorwise", "rowwise", "blockwise-partial"],
)
def test_emulated_gemm_vs_float64(a_block, b_block, shape):
    torch.manual_seed(3)
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(n, k) * 0.02
    a_q, a_s = fp8.quantize_fp8(a, a_block)
    b_q, b_s = fp8.quantize_fp8(b, b_block)
    got = fp8.fp8_gemm(a_q, a_s, a_block, b_q, b_s, b_block, impl="emulate")
    ref = fp8.dequantize_fp8(a_q, a_s, a_block).double() @ fp8.dequantize_fp8(b_q, b_s, b_block).double().T
    err = rel_err(got, ref)
    assert err <= TOL["emulate_vs_f64"], f"emulated fp8 gemm rel err {err:.3e} > {TOL['emulate_vs_f64']} ({shape})"


def test_triton_scale_expansion_matches_dequant():
    from layerbisect.kernels.triton_fp8 import per_row_k_tile_scales

    torch.manual_seed(4)
    s = torch.rand(2, 6)
    got = per_row_k_tile_scales(s, (200, 704), (128, 128))  # (200, 6)
    full = fp8.expand_scale(s, (200, 704), (128, 128))
    assert torch.equal(got, full[:, ::128])
    with pytest.raises(ValueError, match="multiples of 128"):
        per_row_k_tile_scales(torch.rand(200, 11), (200, 704), (1, 64))



@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3fn", "e5m2"])
def test_fp8_to_float32_table_is_torchs_conversion_bit_for_bit(dtype):
    # every code (NaN payloads and ±0 included), in a tensor longer than one index block, non-contiguous too
    codes = torch.arange(256, dtype=torch.uint8).repeat(17000).view(dtype)  # 4.35M > the 4M-element block
    got, want = fp8.fp8_to_float32(codes), codes.to(torch.float32)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    q = codes[: 256 * 64].reshape(256, 64).t()
    assert torch.equal(fp8.fp8_to_float32(q).view(torch.int32), q.to(torch.float32).view(torch.int32))
