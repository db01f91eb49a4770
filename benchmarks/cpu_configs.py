#!/usr/bin/env python
"""Gemma 3 270M vs its FP8 checkpoint on the CPU under one torch-thread / job configuration (BENCHMARKS (b')).

    python benchmarks/cpu_configs.py GGUF CAND_DIR THREADS {0,1,auto,hf} LABEL [RUNS]

THREADS: torch.set_num_threads; 0/1/auto: the jobs after the passes one after another, in threads, or the
pipeline's choice; hf: transformers' GGUF load + output_hidden_states instead. Prints one JSON line per run
(bench.run_compare's timings, RSS sampled every 2 ms). Run each configuration in its own process.
"""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench  # noqa: E402

IDS = [2, 818, 5279, 529, 7001, 563]  # "The capital of France is" with BOS


def main(argv: list[str]) -> None:
    gguf, cand, threads, conc, label = Path(argv[0]), Path(argv[1]), int(argv[2]), argv[3], argv[4]
    runs = int(argv[5]) if len(argv) > 5 else 2
    torch.set_num_threads(threads)
    if conc == "hf":
        print(json.dumps({"label": label, "hf": bench.transformers_path(gguf, IDS, "cpu")}))
        return
    c = None if conc == "auto" else conc == "1"
    for k in range(runs):
        r = bench.run_compare(gguf, cand, "cpu", tokens=IDS, generate=8, out_dir=Path(f"/tmp/cpu-configs-{label}"),
                              concurrent=c)
        r = {key: v for key, v in r.items() if key not in ("memory", "peak")}
        r["rss_gib"] = r.pop("host_rss_sampled") / 2**30
        print(json.dumps({"label": label, "run": k, **{key: round(v, 2) if isinstance(v, float) else v
                                                       for key, v in r.items()}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
