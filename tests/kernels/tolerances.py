"""The one tolerance table for kernel and quantized-linear tests. Bit-exact checks use torch.equal, not this.

Each entry: (max |got - ref| / max |ref|), i.e. error normalized by the output's scale, and why it is enough.
"""

from __future__ import annotations

TOL = {
    # Emulated GEMM (FP32 matmul of exactly dequantized operands) vs a float64 matmul of the same operands:
    # only FP32 accumulation/rounding, ~sqrt(K) * 2^-24 relative; K <= 2048 here -> 1e-5 leaves >10x margin.
    "emulate_vs_f64": 1e-5,
    # Native FP8 (scaled_mm / Triton) vs emulation with an FP32 output: accumulation order plus Hopper FP8 MMA's
    # reduced-precision accumulator inside one 128-wide K tile (~2^-13 relative, per DeepSeek-V3 report).
    "fp8_native_f32": 2e-3,
    # Native FP8 with a bf16 output (rowwise/blockwise scaled_mm on builds without FP32 out): one bf16 rounding
    # of every output element, 2^-8 relative.
    "fp8_native_bf16": 8e-3,
    # Triton NVFP4 vs emulation: exact bf16 products, FP32 accumulation, global scales applied last (1 ulp on
    # the scale) -> FP32-level differences only.
    "nvfp4_triton": 1e-5,
}


def rel_err(got, ref) -> float:
    """max |got - ref| / max |ref| in float64 (0 when both are zero)."""
    g = got.double()
    r = ref.double()
    denom = r.abs().max().item()
    return (g - r).abs().max().item() / (denom if denom > 0 else 1.0)


def bit_report(got, ref) -> str:
    """Diagnosis for a bit-exact mismatch: count, share, worst element."""
    g = got.double().flatten()
    r = ref.double().flatten()
    bad = ~((g == r) | (g.isnan() & r.isnan()))
    n = int(bad.sum())
    if n == 0:
        return "identical"
    i = int((g - r).abs().nan_to_num(float("inf")).argmax())
    return (f"{n}/{g.numel()} elements differ ({100 * n / g.numel():.3f}%); worst at flat index {i}: "
            f"got {g[i].item()!r}, ref {r[i].item()!r}")
