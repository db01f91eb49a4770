"""Fused NVFP4 unpack + dequantize + GEMM in Triton (Hopper: no FP4 MMA, so bf16 tensor cores), behind
``TRITON_AVAILABLE``.

Format and layout (as ``nvfp4.py``)
    A ``(M, K/2)`` uint8 packed E2M1 codes (activations, quantized by ``nvfp4.quantize_nvfp4`` on the GPU),
    B ``(N, K/2)`` uint8 packed codes (``weight_packed``); element 2j = low nibble, 2j+1 = high nibble.
    Block scales ``(M, K/16)`` / ``(N, K/16)`` float8_e4m3fn, passed to the kernel as float32 (K/16 per row:
    negligible traffic, and no dependence on Triton's fp8 load support).

Scale convention
    The kernel multiplies each E2M1 value by its E4M3 block scale and applies the two global scales **once, at
    the end**, as ``alpha = factor_a * factor_b`` with ``factor = 1/global_scale`` (compressed-tensors divisor)
    or ``weight_scale_2`` (ModelOpt multiplier) — see ``nvfp4.GlobalScale.factor``.

Numerics
    ``e2m1 * e4m3`` has at most 6 significant bits and lies in [2^-10, 2688]: it is exact in bf16. So the bf16
    MMA sees exactly the values ``e2m1 * s_block`` and accumulates in FP32. The emulation instead rounds
    ``s_block / global_scale`` to FP32 before the product; the two differ by FP32 rounding of the scales
    (~1 ulp) and by accumulation order only.
"""

from __future__ import annotations

import torch

from layerbisect.kernels import on_device

try:  # triton is optional: the CPU install has none
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    TRITON_AVAILABLE = False


if TRITON_AVAILABLE:

    @triton.jit
    def _decode_e2m1(codes):
        """uint8 codes (any shape) -> float32 E2M1 values, branch-free and exact."""
        mag = codes & 7
        small = mag.to(tl.float32) * 0.5  # codes 0, 1 -> 0, 0.5
        e = mag >> 1  # 1, 2, 3 for codes 2..7
        factor = tl.where(e == 1, 0.5, tl.where(e == 2, 1.0, 2.0))
        big = ((mag & 1) + 2).to(tl.float32) * factor  # 1, 1.5, 2, 3, 4, 6
        val = tl.where(mag < 2, small, big)
        return tl.where((codes & 8) != 0, -val, val)

    @triton.jit
    def _load_dequant_tile(p_ptr, s_ptr, offs_r, mask_r, kt, K, stride_pr, stride_sr,
                           BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
        """Load a (BLOCK_R, BLOCK_K) tile of packed codes + block scales, return e2m1 * scale in bf16."""
        offs_kp = kt * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
        offs_ks = kt * (BLOCK_K // 16) + tl.arange(0, BLOCK_K // 16)
        mask_kp = offs_kp < K // 2
        mask_ks = offs_ks < K // 16
        packed = tl.load(p_ptr + offs_r[:, None] * stride_pr + offs_kp[None, :],
                         mask=mask_r[:, None] & mask_kp[None, :], other=0)  # (R, BK/2) uint8
        lo = _decode_e2m1(packed & 0xF)
        hi = _decode_e2m1(packed >> 4)
        vals = tl.reshape(tl.join(lo, hi), (BLOCK_R, BLOCK_K))  # element 2j = lo, 2j+1 = hi
        s = tl.load(s_ptr + offs_r[:, None] * stride_sr + offs_ks[None, :],
                    mask=mask_r[:, None] & mask_ks[None, :], other=0.0)  # (R, BK/16) fp32
        vals = tl.reshape(tl.reshape(vals, (BLOCK_R, BLOCK_K // 16, 16)) * s[:, :, None], (BLOCK_R, BLOCK_K))
        return vals.to(tl.bfloat16)

    @triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
            triton.Config({"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
        ],
        key=["M", "N", "K"],
    )
    @triton.jit
    def _nvfp4_gemm_kernel(
        a_ptr, sa_ptr, b_ptr, sb_ptr, c_ptr, alpha,
        M, N, K,
        stride_am, stride_sam, stride_bn, stride_sbn, stride_cm, stride_cn,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kt in range(0, tl.cdiv(K, BLOCK_K)):
            a = _load_dequant_tile(a_ptr, sa_ptr, offs_m, mask_m, kt, K, stride_am, stride_sam, BLOCK_M, BLOCK_K)
            b = _load_dequant_tile(b_ptr, sb_ptr, offs_n, mask_n, kt, K, stride_bn, stride_sbn, BLOCK_N, BLOCK_K)
            acc = tl.dot(a, tl.trans(b), acc)
        acc = acc * alpha
        tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, acc,
                 mask=mask_m[:, None] & mask_n[None, :])


def nvfp4_gemm(
    a_packed: torch.Tensor, a_scale: torch.Tensor, b_packed: torch.Tensor, b_scale: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``alpha * (e2m1(a)*s_a) @ (e2m1(b)*s_b).T`` -> (M, N) float32. a (M, K/2), b (N, K/2) uint8 on CUDA."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("triton is not installed; use impl='emulate'")
    if not a_packed.is_cuda:
        raise RuntimeError("triton nvfp4 gemm needs CUDA tensors")
    m, kh = a_packed.shape
    n = b_packed.shape[0]
    k = kh * 2
    if k % 16:
        raise ValueError(f"NVFP4 K must be a multiple of 16, got {k}")
    a_packed = a_packed.contiguous()
    b_packed = b_packed.contiguous()
    sa = a_scale.to(a_packed.device, torch.float32).contiguous()
    sb = b_scale.to(b_packed.device, torch.float32).contiguous()
    c = torch.empty(m, n, device=a_packed.device, dtype=torch.float32)

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    with on_device(c.device):
        _nvfp4_gemm_kernel[grid](
            a_packed, sa, b_packed, sb, c, float(alpha), m, n, k,
            a_packed.stride(0), sa.stride(0), b_packed.stride(0), sb.stride(0), c.stride(0), c.stride(1),
        )
    return c

