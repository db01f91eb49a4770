"""FP8 KV cache: E4M3 round trip with per-layer scales; calibration happens once and is frozen."""

from __future__ import annotations

import torch

from layerbisect.kernels.fp8 import dequantize_fp8, quantize_fp8
from layerbisect.kv_cache import FP8KVQuant, fp8_roundtrip


def test_roundtrip_matches_the_fp8_kernel_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 2, 64, generator=g) * 30
    s = torch.tensor([0.05])
    q, _ = quantize_fp8(x.reshape(-1, 64), (None, None), scale=s)
    want = dequantize_fp8(q, s, (None, None)).reshape(x.shape)
    assert torch.equal(fp8_roundtrip(x, s), want)


def test_saturates_instead_of_overflowing():
    x = torch.tensor([1e6, -1e6, 1.0])
    assert torch.equal(fp8_roundtrip(x, 1.0), torch.tensor([448.0, -448.0, 1.0]))


def test_calibrate_freezes_first_pass_scales():
    kv = FP8KVQuant(source="calibrate")
    k1 = torch.full((3, 1, 8), 2.0)
    kv(0, k1, k1)
    first = kv.k_scale[0]
    assert abs(first - 2.0 / 448) < 1e-9
    kv(0, k1 * 100, k1 * 100)  # decode steps reuse the frozen scale: big values saturate
    assert kv.k_scale[0] == first
    k_out, _ = kv(0, k1 * 100, k1 * 100)
    assert float(k_out.max()) == 2.0  # 448 · (2/448)


def test_unit_scales():
    kv = FP8KVQuant(source="unit")
    k, v = kv(3, torch.tensor([[[0.3]]]), torch.tensor([[[500.0]]]))
    assert kv.k_scale[3] == kv.v_scale[3] == 1.0 and float(v) == 448.0
