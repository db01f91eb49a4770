"""The long fuzz run: thousands of hostile inputs through the real CLI; writes the counts to docs/RELIABILITY.md.

    python tests/fuzz/long_run.py --cases 4000 --out docs/RELIABILITY.md

Same strategies and sandbox as the CI run (tests/fuzz/cases.py, tests/fuzz/sandbox.py), random seed given
on the command line, no shrinking: every case is counted, none stops the run. Also measures the issue's memory
bomb (a GGUF header claiming 10**9 vocabulary strings, on the real Gemma 3 270M) when the ``gemma`` extra is
installed. Exit status 1 when any case produced a traceback or a hang.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]  # this checkout's layerbisect; tests/: the fuzz package

from fuzz.cases import STRATEGIES, materialize, seed_sizes  # noqa: E402
from fuzz.sandbox import Sandbox  # noqa: E402

SHARE = {"gguf": 0.35, "safetensors": 0.25, "config": 0.28, "index": 0.12}
MiB = 1 << 20


def run_target(target: str, n: int, seeds: dict, sb: Sandbox, work: Path, seed: int, timeout: float) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    rec: dict = {"cases": 0, "verdicts": Counter(), "rc": Counter(), "rss": [], "grow": [], "secs": [], "bad": []}

    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=STRATEGIES[target](seed_sizes(seeds)))
    def one(case):
        argv = materialize(case, seeds, work)
        o = sb.run(argv, timeout=timeout)
        rec["cases"] += 1
        rec["verdicts"][o.verdict] += 1
        rec["rc"][o.rc] += 1
        rec["rss"].append(o.maxrss_bytes)
        rec["grow"].append(o.rss_growth)
        rec["secs"].append(o.seconds)
        if o.verdict != "clean" and len(rec["bad"]) < 10:
            tail = [ln for ln in o.stderr.splitlines() if ln.strip()][-1:] or [""]
            rec["bad"].append((o.verdict, o.rc, repr(case)[:300], tail[0][:300]))

    one()
    return rec


def measure_bomb(sb: Sandbox, work: Path) -> dict | None:
    """The 10**9-string vocabulary claim on the real Gemma 3 270M header: time to refuse, peak RSS."""
    try:
        from layerbisect.producers.cache import bundled_gguf

        real = bundled_gguf()
    except Exception as e:  # noqa: BLE001 - the gemma extra is optional
        print(f"bomb measurement skipped: {e}")
        return None
    from fuzz.mutate import array_len_slot, header_bytes, set_slot

    head = header_bytes(real)
    set_slot(head, array_len_slot(real, "tokenizer.ggml.tokens"), 10**9)
    p = work / "bomb.gguf"
    p.write_bytes(bytes(head))
    from layerbisect.errors import InputError
    from layerbisect.references.gguf_file import GGUFFile

    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        try:
            GGUFFile(p)
        except InputError as e:
            msg = str(e)
        times.append(time.perf_counter() - t0)
    o = sb.run(["run", str(p), "--tokens", "2,3", "-n", "1"])
    return {"refuse_s": min(times), "refuse_median_s": statistics.median(times), "message": msg,
            "cli_verdict": o.verdict, "cli_rc": o.rc, "cli_s": o.seconds, "cli_rss": o.maxrss_bytes,
            "cli_growth": o.rss_growth, "header_bytes": len(head)}


def write_doc(out: Path, cmd: str, recs: dict, bomb: dict | None, started: str, wall: float, baseline: int) -> None:
    import torch

    rows = []
    tot = Counter()
    worst_rss, worst_grow, worst_t = 0, 0, 0.0
    for target, r in recs.items():
        v, rc = r["verdicts"], r["rc"]
        rss = max(r["rss"], default=0)
        grow = max(r["grow"], default=0)
        worst_rss, worst_grow = max(worst_rss, rss), max(worst_grow, grow)
        worst_t = max(worst_t, max(r["secs"], default=0.0))
        secs = f"{statistics.median(r['secs']):.2f} / {max(r['secs']):.1f}"
        rows.append(f"| {target} | {r['cases']} | {v['clean']} | {rc[0]} | {rc[2]} | {v['traceback']} | {v['hang']} "
                    f"| {rss / MiB:.0f} | {grow / MiB:.0f} | {secs} |")
        tot.update({"cases": r["cases"], "clean": v["clean"], "rc0": rc[0], "rc2": rc[2], "tb": v["traceback"],
                    "hang": v["hang"]})
    rows.append(f"| **all** | **{tot['cases']}** | **{tot['clean']}** | {tot['rc0']} | {tot['rc2']} | **{tot['tb']}** "
                f"| **{tot['hang']}** | **{worst_rss / MiB:.0f}** | **{worst_grow / MiB:.0f}** | max {worst_t:.1f} |")
    bad = [f"- `{t}` {verdict} (exit {rc}): {case} → `{line}`" for t, r in recs.items()
           for verdict, rc, case, line in r["bad"]]
    lines = [
        "# Reliability: hostile and broken inputs",
        "",
        "What `bisect` promises for bad input (issue 15): one line on stderr naming the file (and the tensor or",
        "field) and the problem, exit code 2; no traceback, no hang, no memory bomb, no silent acceptance, no",
        "half-written report. The edges that keep it: `layerbisect/validation.py` (typed, ranged config fields;",
        "regular files only; JSON depth and size), `references/fast_reader.py` (every GGUF count, length and offset",
        "checked against the file size before anything is allocated), `candidates/checkpoint.py` (the safetensors",
        "library's own header checks; index paths kept inside the checkpoint), `preflight.py` (arguments and",
        "headers checked before any model loads), `outputs.py` (staged, renamed-into-place outputs; SIGINT exits",
        "130 and leaves the previous report as it was), `audit/scales.py` (non-finite, zero or negative scales",
        "are critical findings). Each failure kind of the issue is a test in `tests/cli/test_hostile_inputs.py`",
        "and `tests/cli/test_interrupt.py`.",
        "",
        "## Fuzzing",
        "",
        "Hypothesis generates mutations of real seed files (tiny Gemma 3 / Llama models: GGUF written through",
        "gguf-py, F32 and Q8_0; FP8 and NVFP4 checkpoints written by llmcompressor): GGUF header fields (every",
        "count, string length, array length, type tag, dimension, data offset), scalar metadata values, byte",
        "flips, splices and cuts; safetensors header JSON (any JSON, per-entry dtype/shape/offsets, dropped",
        "entries, declared length, byte flips, cuts) and scale data set to NaN/Inf/0; config.json fields and",
        "`quantization_config` fields set to any JSON, the document replaced by any JSON or bytes, files swapped",
        "for FIFOs, directories and dangling or looping symlinks; index weight_maps with hostile shard names",
        "(`tests/fuzz/cases.py`). Each case runs `bisect run CASE --tokens 2,10,11 -n 1` in a forked child of a",
        "worker that imported torch once (`tests/fuzz/sandbox.py`), with `RLIMIT_AS` = worker + 1 GiB (a memory",
        "bomb fails as MemoryError: a traceback) and a wall-clock limit (a hang is killed and counted).",
        "A case is **clean** when it exits 0 (a harmless mutation: the model ran) or 2 with exactly one",
        "`bisect: error: ...` line; anything else is a **traceback**.",
        "",
        "CI runs 260 cases (`tests/fuzz/test_fuzz_inputs.py`, fixed seed, marked slow). The long run:",
        "",
        f"    {cmd}",
        "",
        f"Measured {started} on {platform.node() or 'this machine'} ({platform.machine()}, "
        f"{_cpus()} CPUs, torch {torch.__version__}); wall time {wall / 60:.1f} min.",
        "",
        "| target | cases | clean | exit 0 | exit 2 | tracebacks | hangs | peak RSS MiB | of it the case's own MiB "
        "| s per case (median / max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Peak RSS is the forked child's `ru_maxrss` (the worst case over all cases), which includes the pages",
        f"inherited from the worker that imported torch ({baseline / MiB:.0f} MiB when it started); the case's",
        "own is the most any case added above the worker's RSS at the fork (the limit was 1 GiB of address space).",
        "",
    ]
    if bad:
        lines += ["Cases that were not clean:", "", *bad, ""]
    if bomb is not None:
        lines += [
            "## The 10⁹-entry metadata claim",
            "",
            "The real Gemma 3 270M header with `tokenizer.ggml.tokens` claiming 10⁹ strings (gguf-py alone: 280 s",
            "and > 10 GB before it was killed). `GGUFFile` compares the claim with the bytes left before allocating:",
            "",
            f"- refused in {bomb['refuse_s'] * 1000:.2f} ms (best of 5; median {bomb['refuse_median_s'] * 1000:.2f} "
            f"ms), header of {bomb['header_bytes'] / MiB:.1f} MiB;",
            f"- through the CLI: {bomb['cli_verdict']} exit {bomb['cli_rc']} in {bomb['cli_s']:.2f} s (fork to exit), "
            f"peak RSS {bomb['cli_rss'] / MiB:.0f} MiB including the torch-importing worker it was forked from, "
            f"{bomb['cli_growth'] / MiB:.0f} MiB of it its own;",
            f"- the message: `{bomb['message']}`",
            "",
        ]
    out.write_text("\n".join(lines))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _seeds_in_subprocess(root: Path) -> dict[str, Path]:
    """``make_seeds`` in a child: llmcompressor and transformers stay out of this process (GBs once imported)."""
    import json
    import subprocess

    code = ("import json, sys; from pathlib import Path; sys.path[:0] = [sys.argv[3], sys.argv[1]]; "
            "from fuzz.cases import make_seeds; "
            "print(json.dumps({k: str(v) for k, v in make_seeds(Path(sys.argv[2])).items()}))")
    res = subprocess.run([sys.executable, "-c", code, str(HERE.parent), str(root), str(HERE.parents[1])],
                         capture_output=True, text=True, check=True)
    return {k: Path(v) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    ap.add_argument("--mem", type=int, default=1 << 30, help="address space per case above the worker (bytes)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown report here (docs/RELIABILITY.md)")
    ap.add_argument("--targets", default=",".join(SHARE))
    args = ap.parse_args()
    cmd = "python tests/fuzz/long_run.py " + " ".join(sys.argv[1:])
    started = datetime.now().strftime("%Y-%m-%d %H:%M")
    t0 = time.time()
    targets = [t for t in args.targets.split(",") if t]
    with tempfile.TemporaryDirectory(prefix="bisect-fuzz-long-") as tmp:
        root = Path(tmp)
        print("making seeds (llmcompressor, gguf-py) ...", flush=True)
        seeds = _seeds_in_subprocess(root / "seeds")
        recs = {}
        with Sandbox(timeout=args.timeout, mem_bytes=args.mem) as sb:
            baseline = sb.baseline_rss
            for t in targets:
                n = max(1, round(args.cases * SHARE[t] / sum(SHARE[x] for x in targets)))
                t1 = time.time()
                recs[t] = run_target(t, n, seeds, sb, root / "case", args.seed, args.timeout)
                v = recs[t]["verdicts"]
                print(f"{t}: {recs[t]['cases']} cases, clean {v['clean']}, tracebacks {v['traceback']}, "
                      f"hangs {v['hang']} ({time.time() - t1:.0f} s)", flush=True)
            bomb = measure_bomb(sb, root)
    if args.out:
        write_doc(args.out, cmd, recs, bomb, started, time.time() - t0, baseline)
        print(f"wrote {args.out}")
    bad = sum(r["verdicts"]["traceback"] + r["verdicts"]["hang"] for r in recs.values())
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
