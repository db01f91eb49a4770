"""Write tiny checkpoints quantized by NVIDIA ModelOpt itself into ``tests/data/modelopt/<scheme>/<arch>/``.

These are files written by the real producer (``mtq.quantize`` + the unified HF export), committed so that CI,
which has no nvidia-modelopt, can check our ModelOpt loader against them
(``tests/kernels/test_modelopt_checkpoints.py``).
Everything runs on CPU, NVFP4 included.

Run it in a separate environment so that ModelOpt does not touch the project's torch/transformers::

    python -m venv --system-site-packages /tmp/mo && /tmp/mo/bin/pip install nvidia-modelopt
    /tmp/mo/bin/python scripts/make_modelopt_fixtures.py            # all schemes x archs
    /tmp/mo/bin/python scripts/make_modelopt_fixtures.py --schemes fp8 --archs llama

Each fixture directory holds what ``export_hf_checkpoint`` wrote (config.json with ``quantization_config``,
hf_quant_config.json, generation_config.json, model.safetensors), the tiny tokenizer, ``fixture.json`` (the
``make_tiny_hf`` arguments of the unquantized model: the test regenerates it and checks the unquantized tensors are
bit-identical; the calibration inputs; the ModelOpt version) and, for FP8, ``modelopt_fake_quant_logits.st``:
ModelOpt's own fake-quant forward (FP32) on ``PROMPT`` (safetensors format, not named ``*.safetensors`` so that
loaders do not take it for a weight shard). ModelOpt's NVFP4 fake-quant forward needs CUDA, so NVFP4
fixtures have no logits (the export itself runs on CPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "modelopt"

# Small enough that every fixture directory stays under ~300 KB (vocab 512 x hidden 64 embeddings dominate).
TINY = {
    "llama": dict(seed=0, dtype="bfloat16", hidden=64, n_layers=2, vocab=512),
    # 2 layers: both sliding-window, as llama.cpp's hard-coded gemma3 pattern (every 6th global) also says
    "gemma3": dict(seed=0, dtype="bfloat16", hidden=64, n_layers=2, vocab=512),
}
CALIB = dict(seed=1234, batches=8, batch_size=2, seq_len=16)
PROMPT = [1, 5, 9, 77, 300, 42, 17, 8, 99, 100, 3, 4]  # ids for ModelOpt's fake-quant logits (FP8 only)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def calibration_batches(vocab: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(CALIB["seed"])
    return [torch.randint(3, vocab, (CALIB["batch_size"], CALIB["seq_len"]), generator=g)
            for _ in range(CALIB["batches"])]


def make_one(arch: str, scheme: str, out_root: Path) -> Path:
    import modelopt
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import AutoModelForCausalLM

    from layerbisect.producers.tiny import make_tiny_hf

    cfg = {"fp8": mtq.FP8_DEFAULT_CFG, "nvfp4": mtq.NVFP4_DEFAULT_CFG}[scheme]
    kw = TINY[arch]
    with tempfile.TemporaryDirectory() as tmp:
        hf = make_tiny_hf(arch, Path(tmp) / "hf", **kw)
        model = AutoModelForCausalLM.from_pretrained(hf, dtype=getattr(torch, kw["dtype"])).eval()
        batches = calibration_batches(kw["vocab"])

        def forward_loop(m: torch.nn.Module) -> None:
            with torch.no_grad():
                for b in batches:
                    m(b)

        model = mtq.quantize(model, cfg, forward_loop)
        out = out_root / scheme / arch
        logits = None
        if scheme == "fp8":
            # ModelOpt's own fake-quant forward in FP32 on the same (bf16-valued) weights, before the export turns
            # the weights into FP8 in place. NVFP4 fake-quant needs CUDA in ModelOpt ("amax must be a CUDA tensor
            # for dynamic block quantization"), so only FP8 gets these.
            with torch.no_grad():
                logits = copy.deepcopy(model).float()(torch.tensor([PROMPT])).logits[0].float()
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        export_hf_checkpoint(model, export_dir=out)
        if logits is not None:
            save_file({"tokens": torch.tensor(PROMPT), "logits": logits.contiguous()},
                      str(out / "modelopt_fake_quant_logits.st"))
        for name in TOKENIZER_FILES:
            if (hf / name).is_file():
                shutil.copy(hf / name, out / name)
    (out / "fixture.json").write_text(json.dumps({
        "producer": f"nvidia-modelopt {modelopt.__version__}",
        "torch": torch.__version__,
        "quant_cfg": {"fp8": "mtq.FP8_DEFAULT_CFG", "nvfp4": "mtq.NVFP4_DEFAULT_CFG"}[scheme],
        "export": "modelopt.torch.export.export_hf_checkpoint",
        "make_tiny_hf": {"arch": arch, **kw},
        "fake_quant_logits": "modelopt_fake_quant_logits.st: FP32 fake-quant forward on tokens (fp8 only)"
        if logits is not None else None,
        "calibration": {**CALIB, "ids": "torch.randint(3, vocab, (batch_size, seq_len)) per batch"},
    }, indent=2) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", nargs="+", default=["fp8", "nvfp4"], choices=["fp8", "nvfp4"])
    ap.add_argument("--archs", nargs="+", default=list(TINY), choices=list(TINY))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    for scheme in args.schemes:
        for arch in args.archs:
            out = make_one(arch, scheme, args.out)
            sizes = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
            print(f"{out}: {sum(sizes.values()) / 1024:.0f} KB {sizes}")


if __name__ == "__main__":
    main()
