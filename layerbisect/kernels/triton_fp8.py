"""Block-scaled FP8 GEMM in Triton (Hopper FP8 tensor cores), behind ``TRITON_AVAILABLE``.

Format and layout
    A ``(M, K)`` float8_e4m3fn activations, row-major; B ``(N, K)`` float8_e4m3fn weights, row-major (the
    nn.Linear layout; the kernel reads B^T tiles by strides, no copy). Output ``(M, N)`` float32.

Scale convention
    Multipliers (``x ≈ q * s``), as in ``fp8.py``. Inside the kernel every scale is per (row, 128-wide K tile):
    ``sa (M, ceil(K/128))`` and ``sb (N, ceil(K/128))``. The wrapper expands the checkpoint layouts to that:
    per-tensor and per-row scales are constant along K; 1x128 groups are already in that shape; 128x128 weight
    blocks are repeated over their 128 rows (N*K/128 floats: 1/128 of the weight). A K block that is not a
    multiple of 128 (and not the whole K) is rejected.

Numerics
    Each 128-wide K tile is one ``tl.dot`` accumulated in FP32 by the tensor cores, then multiplied by
    ``sa[:, None] * sb[None, :]`` and added to an FP32 accumulator (DeepSeek-V3 style promotion). Differences
    from ``fp8.fp8_gemm_emulated`` come only from accumulation order and from the reduced-precision accumulation
    inside Hopper's FP8 MMA; see the tolerance table in docs/KERNELS.md.
"""

from __future__ import annotations

import math

import torch

from layerbisect.kernels import on_device
from layerbisect.kernels.blocks import resolve_block, scale_shape

try:  # triton is optional: the CPU install has none
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    triton = None
    tl = None
    TRITON_AVAILABLE = False

K_TILE = 128


def per_row_k_tile_scales(
    scale: torch.Tensor, shape: tuple[int, int], block: tuple[int | None, int | None]
) -> torch.Tensor:
    """Expand a (bh, bw) block scale of an (R, K) matrix to one scale per (row, 128-wide K tile): (R, ceil(K/128))."""
    r, k = shape
    bh, bw = resolve_block(shape, block)
    kt = math.ceil(k / K_TILE)
    if bw != k and bw % K_TILE != 0:
        raise ValueError(f"triton fp8 gemm needs K blocks that are multiples of {K_TILE} or the whole K; got {bw}")
    s = scale.float().reshape(scale_shape(shape, (bh, bw)))
    s_rows = s.repeat_interleave(bh, dim=0)[:r]  # (R, ceil(K/bw))
    if s_rows.shape[1] == 1:
        return s_rows.expand(r, kt).contiguous()
    return s_rows.repeat_interleave(bw // K_TILE, dim=1)[:, :kt].contiguous()


if TRITON_AVAILABLE:

    @triton.autotune(
        configs=[
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "GROUP_M": 8}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "GROUP_M": 8}, num_warps=4, num_stages=4),
            triton.Config({"BLOCK_M": 16, "BLOCK_N": 128, "GROUP_M": 1}, num_warps=4, num_stages=4),
        ],
        key=["M", "N", "K"],
    )
    @triton.jit
    def _fp8_block_gemm_kernel(
        a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr,
        M, N, K,
        stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
        stride_sam, stride_sak, stride_sbn, stride_sbk,
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
        offs_k = tl.arange(0, BLOCK_K)
        mask_m = offs_m < M
        mask_n = offs_n < N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kt in range(0, tl.cdiv(K, BLOCK_K)):
            k = kt * BLOCK_K + offs_k
            mask_k = k < K
            a = tl.load(a_ptr + offs_m[:, None] * stride_am + k[None, :] * stride_ak,
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)  # (BM, BK) fp8
            b = tl.load(b_ptr + offs_n[None, :] * stride_bn + k[:, None] * stride_bk,
                        mask=mask_k[:, None] & mask_n[None, :], other=0.0)  # (BK, BN) fp8
            sa = tl.load(sa_ptr + offs_m * stride_sam + kt * stride_sak, mask=mask_m, other=0.0)
            sb = tl.load(sb_ptr + offs_n * stride_sbn + kt * stride_sbk, mask=mask_n, other=0.0)
            acc += tl.dot(a, b) * sa[:, None] * sb[None, :]
        tl.store(c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn, acc,
                 mask=mask_m[:, None] & mask_n[None, :])


def fp8_block_gemm(
    a_q: torch.Tensor, a_scale: torch.Tensor, a_block: tuple[int | None, int | None],
    b_q: torch.Tensor, b_scale: torch.Tensor, b_block: tuple[int | None, int | None],
) -> torch.Tensor:
    """``dequant(a) @ dequant(b).T`` with the Triton kernel; a (M, K), b (N, K) float8_e4m3fn on CUDA."""
    if not TRITON_AVAILABLE:
        raise RuntimeError("triton is not installed; use impl='emulate'")
    if not a_q.is_cuda:
        raise RuntimeError("triton fp8 gemm needs CUDA tensors")
    m, k = a_q.shape
    n = b_q.shape[0]
    sa = per_row_k_tile_scales(a_scale.to(a_q.device), (m, k), a_block)
    sb = per_row_k_tile_scales(b_scale.to(b_q.device), (n, k), b_block)
    c = torch.empty(m, n, device=a_q.device, dtype=torch.float32)

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    with on_device(c.device):
        _fp8_block_gemm_kernel[grid](
            a_q, b_q, c, sa, sb, m, n, k,
            a_q.stride(0), a_q.stride(1), b_q.stride(0), b_q.stride(1), c.stride(0), c.stride(1),
            sa.stride(0), sa.stride(1), sb.stride(0), sb.stride(1),
            BLOCK_K=K_TILE,
        )
    return c
