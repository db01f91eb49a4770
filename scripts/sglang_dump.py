"""Write real SGLang dumps of a transformers model with SGLang's own dump code, the way SGLang's model
runner drives it, for testing layerbisect's SGLang readers.

Runs where ``sglang.srt.debug_utils`` imports (a venv with ``sglang==0.5.23 --no-deps`` and the few
packages that module needs; docs/ENGINE_CAPTURE.md, "SGLang"), with layerbisect importable:

    PYTHONPATH=. /work/venvs/sglang/bin/python scripts/sglang_dump.py HF_DIR OUT/ [--tokens 1,5,9] [--decode 1]

Writes ``OUT/dumper/run/*.pt`` (``sglang.srt.debug_utils.dumper``: the non-intrusive dumper in
``all`` mode registered on the model, ``dumper.step()`` after every forward, as
``ModelRunner`` does) and ``OUT/passes/TP0_PP0_Rank0_pid*/Pass*.pt``
(``tensor_dump_forward_hook.register_forward_hook_for_model``, what
``--debug-tensor-dump-output-folder`` installs). The model runs a prefill of the tokens, then
``--decode`` greedy decode steps with the KV cache; each forward is one step/pass. The model is a
transformers one (SGLang's own model classes need its distributed runtime), so the module
names are transformers' (``hf_*`` maps), not SGLang's (``sglang_llama``).

Prints one JSON line: the token ids of every step and the files written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("hf_dir")
    ap.add_argument("out")
    ap.add_argument("--tokens", default="1,40,41,42,43")
    ap.add_argument("--decode", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--filter", default=None, help="the dumper's own filter expression over its tags (DUMPER_FILTER)")
    args = ap.parse_args(argv)

    import torch
    from sglang.srt.debug_utils import dumper as dumper_mod
    from sglang.srt.debug_utils.tensor_dump_forward_hook import register_forward_hook_for_model
    from transformers import AutoModelForCausalLM

    out = Path(args.out)
    model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=getattr(torch, args.dtype)).eval()
    ids = [int(t) for t in args.tokens.split(",")]

    dumper = dumper_mod.dumper
    dumper.configure(
        enable=True,
        dir=str(out / "dumper"),
        exp_name="run",
        non_intrusive_mode="all",
        enable_output_console=False,
        cleanup_previous=True,
        filter=args.filter,
    )
    dumper.register_non_intrusive_dumper(model)
    passes = register_forward_hook_for_model(model, str(out / "passes"), None, 1, 0, 0)

    steps: list[list[int]] = []
    with torch.no_grad():
        cur = torch.tensor([ids])
        past = None
        start = 0
        for _ in range(1 + args.decode):
            pos = torch.arange(start, start + cur.shape[1]).unsqueeze(0)
            res = model(input_ids=cur, position_ids=pos, past_key_values=past, use_cache=True)
            dumper.step()  # ModelRunner.forward calls it after every forward pass
            steps.append(cur[0].tolist())
            past = res.past_key_values
            start += cur.shape[1]
            cur = res.logits[:, -1:].argmax(-1)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*.pt"))
    print(json.dumps({"steps": steps, "passes_dir": passes.get_dump_dir(), "n_files": len(files), "pid": os.getpid()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
