#!/usr/bin/env python
"""llama.cpp as a captured engine on the real Gemma 3 270M Q4_K_M: three runs and the capture overhead.

    python scripts/llamacpp_capture_runs.py [--out-dir DIR]

The reference is always our FP32 run of the bundled Q4_K_M GGUF; the candidate is llama.cpp's
own activations (``capture_llamacpp``), read back as a dump:

1. llama.cpp running the same GGUF: only llama.cpp's arithmetic differs;
2. llama.cpp running a lower quant made by llama.cpp's own quantizer (Q2_K, requantized);
3. llama.cpp running a copy with a planted fault: blk.5.ffn_down.weight x4 (its Q4_K block
   scales d and dmin multiplied, ``producers.gguf_edit.scale_tensor``).

Prints a Markdown section (findings, gate verdict, timings) for docs/ENGINE_CAPTURE.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

IDS = [2, 818, 5279, 529, 7001, 563]  # "The capital of France is" with BOS, llama.cpp's tokenization too
FAULT = ("blk.5.ffn_down.weight", 4.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=None, help="keep dumps and reports here (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=5, help="decode repeats for the overhead medians")
    args = ap.parse_args(argv)

    import layerbisect
    from layerbisect.comparison import gate as gate_mod
    from layerbisect.engines.llamacpp import capture_llamacpp, decode_overhead
    from layerbisect.pipeline import CompareOptions
    from layerbisect.producers.cache import bundled_gguf
    from layerbisect.producers.gguf_edit import scale_tensor
    from layerbisect.producers.llamacpp import llama_quantize

    ref = bundled_gguf()
    with tempfile.TemporaryDirectory(prefix="llamacpp-runs-") as td:
        root = args.out_dir or Path(td)
        root.mkdir(parents=True, exist_ok=True)
        cands = {
            "same GGUF": ref,
            "Q2_K by llama_quantize": llama_quantize(ref, root / "gemma-q2_k.gguf", "Q2_K", allow_requantize=True,
                                                     overwrite=True),
            f"planted: {FAULT[0]} x{FAULT[1]:g}": scale_tensor(ref, root / "gemma-fault.gguf", *FAULT, overwrite=True),
        }
        lines = ["| run | capture (s) | points | gate | findings (severity, kind: title) |", "|---|---|---|---|---|"]
        for i, (label, gguf_path) in enumerate(cands.items()):
            dump = root / f"dump-{i}"
            t0 = time.perf_counter()
            cap = capture_llamacpp(gguf_path, dump, token_ids=IDS, overwrite=True)
            t_cap = time.perf_counter() - t0
            report = layerbisect.compare(ref, candidate_dump=dump, options=CompareOptions(tokens=IDS, generate=0))
            verdict = gate_mod.evaluate(report)
            report.save(root / f"report-{i}", ("md", "json"), overwrite=True, gate=verdict)
            found = "<br>".join(f"{f.severity}, {f.kind}: {f.title}" for f in report.findings)
            lines.append(f"| {label} | {t_cap:.1f} | {len(cap.names)} | "
                         f"{'pass' if verdict.passed else f'FAIL ({len(verdict.failures)} of {verdict.checked})'}"
                         f" | {found} |")
            print(f"[{label}] {verdict}", flush=True)
        over = [decode_overhead(ref, IDS, repeats=args.repeats)]
        long_ids = IDS + list(range(1000, 1122))  # 128 tokens
        over.append(decode_overhead(ref, long_ids, repeats=args.repeats))
    print()
    print("\n".join(lines))
    print()
    print("| tokens | points | llama_decode plain (s) | with capture (s) | ratio |")
    print("|---|---|---|---|---|")
    for o in over:
        print(f"| {o['tokens']} | {o['points']} | {o['plain_s']:.3f} | {o['capture_s']:.3f} | {o['ratio']:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
