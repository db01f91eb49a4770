"""Sweep blocks-per-program and warps of the Triton GGUF dequant kernel (bit-exactness checked per config).

    python benchmarks/triton_dequant_sweep.py --out DIR   (CUDA + Triton; prints a markdown table)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from layerbisect.kernels import gguf_triton as gt
from layerbisect.references.gguf_dequant import dequantize

QT = gt.QT


def _random_blocks(qtype: QT, n: int, dev: str) -> torch.Tensor:
    """Random bytes with finite f16 scales (the fields that hold them differ per type: rewrite all 2-byte
    candidates is not possible generically, so draw bytes and let the torch path be the oracle)."""
    _, bs, ts, _ = gt.SUPPORTED[qtype]
    g = torch.Generator(device="cpu").manual_seed(0)
    b = torch.randint(0, 256, (n, ts), generator=g, dtype=torch.uint8)
    return b.to(dev)


def _bench(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2] / 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--elements", type=int, default=8192 * 8192)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    dev = "cuda"
    big = torch.empty(a.elements, dtype=torch.float32, device=dev)
    src = torch.randn(a.elements, dtype=torch.float32, device=dev)
    copy_s = _bench(lambda: big.copy_(src))
    copy_bw = 2 * big.numel() * 4 / copy_s / 1e9
    rows = [f"device copy: {copy_bw:.0f} GB/s", "", "| type | blocks/program | warps | GB/s | copy % | bit-exact |",
            "|---|---|---|---|---|---|"]
    orig = dict(gt.SUPPORTED)
    for qtype in (QT.Q8_0, QT.Q4_0, QT.Q5_0, QT.Q4_K, QT.Q6_K):
        kind, bs, ts, bpp0 = orig[qtype]
        n = a.elements // bs
        blocks = _random_blocks(qtype, n, dev)
        ref = dequantize(blocks, qtype, impl="torch").reshape(n, bs)
        out = torch.empty(n, bs, dtype=torch.float32, device=dev)
        choices = (16, 32, 64, 128, 256) if bs == 32 else (2, 4, 8, 16, 32)
        for bpp in choices:
            for warps in (4, 8):
                gt.SUPPORTED[qtype] = (kind, bs, ts, bpp)
                gt.NUM_WARPS = warps
                got = gt.dequantize_blocks(blocks, qtype, out=out)
                keep = ~torch.isnan(ref)  # NaN payloads may differ; every other bit must not
                exact = bool(torch.equal(got.view(torch.int32)[keep], ref.view(torch.int32)[keep]))

                def run(b: torch.Tensor = blocks, q: QT = qtype, o: torch.Tensor = out) -> torch.Tensor:
                    return gt.dequantize_blocks(b, q, out=o)

                t = _bench(run)
                bw = (blocks.numel() + out.numel() * 4) / t / 1e9
                mark = " (current)" if bpp == bpp0 and warps == 4 else ""
                pct = 100 * bw / copy_bw
                rows.append(f"| {qtype.name} | {bpp}{mark} | {warps} | {bw:.0f} | {pct:.0f}% | {exact} |")
        gt.SUPPORTED[qtype] = orig[qtype]
        gt.NUM_WARPS = 4
    text = "\n".join(rows)
    (a.out / "triton_sweep.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
