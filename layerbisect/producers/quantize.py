"""Candidate checkpoints made by the real producer: llmcompressor ``oneshot`` + compressed-tensors.

We do not write FP8/NVFP4 checkpoints ourselves: a hand-written one would share our own
misreadings of the format (which nibble is element 0, whether the global scale multiplies or
divides). The point of a candidate fixture is that someone else's code made it. So this is a
thin, cached wrapper around exactly the run described in
``/work/shared/specs/checkpoints-observed.md``::

    oneshot(model, recipe=QuantizationModifier(targets="Linear", scheme=S, ignore=["lm_head"]),
            dataset=<a few short texts>, processor=tokenizer, ...)
    model.save_pretrained(out, save_compressed=True); tokenizer.save_pretrained(out)

on CPU, with the model loaded in the checkpoint's own dtype (BF16 for the real model).

Calibration: a handful of short fixed texts (``DEFAULT_TEXTS``) as a ``datasets.Dataset`` with a
"text" column; only static activation scales (FP8's ``input_scale``, NVFP4's
``input_global_scale``) depend on it, and fixed texts keep them reproducible.

Cache: ``cache_dir()/candidates/<model-key12>/<SCHEME>-<key8>/``, where model-key is the
sha256 of the source checkpoint directory and key8 hashes the scheme, ignore list, texts and
producer version. Built atomically (see cache.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerbisect.errors import InputError
from layerbisect.producers.cache import build_atomic, cache_dir, options_key, sha256_dir
from layerbisect.quiet import output_to

SCHEMES: tuple[str, ...] = ("FP8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4", "NVFP4A16")

DEFAULT_TEXTS: tuple[str, ...] = (
    "The capital of France is Paris. It is known for the Eiffel Tower and the Louvre.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "Quantization stores weights in fewer bits; calibration picks the scales from real activations.",
)

log = logging.getLogger(__name__)


def _calibration_dataset(texts: Sequence[str]) -> Any:
    from datasets import Dataset

    if not texts or not all(isinstance(t, str) and t for t in texts):
        raise InputError("calibration_texts", "need at least one non-empty string")
    return Dataset.from_dict({"text": list(texts)})


def quantize_checkpoint(
    hf_dir: str | Path,
    scheme: str,
    out_dir: str | Path | None = None,
    calibration_texts: Sequence[str] = DEFAULT_TEXTS,
    ignore: Sequence[str] = ("lm_head",),
    max_seq_length: int = 128,
) -> Path:
    """Quantize the HF checkpoint at ``hf_dir`` with llmcompressor's preset ``scheme``; return the output dir.

    With ``out_dir=None`` the result is cached under ``cache_dir()/candidates/``. The output
    holds the compressed safetensors, config.json with ``quantization_config``, the tokenizer
    and ``layerbisect-producer.json`` (versions, scheme, CPU seconds).
    """
    hf_dir = Path(hf_dir)
    if scheme not in SCHEMES:
        raise InputError("scheme", f"{scheme!r} is not one of {', '.join(SCHEMES)}")
    if not (hf_dir / "config.json").is_file():
        raise InputError(hf_dir, "no config.json: not an HF checkpoint directory")
    cfg = json.loads((hf_dir / "config.json").read_text())
    if cfg.get("quantization_config"):
        # The producer refuses it too, with a less helpful message.
        raise InputError(hf_dir / "config.json", "already has a quantization_config; give an unquantized checkpoint")

    texts = tuple(calibration_texts)
    pipeline = calibration_pipeline(cfg)
    extra = {"pipeline": pipeline} if pipeline else {}  # keys of existing entries stay as they were
    key = options_key(kind="candidate", scheme=scheme, ignore=list(ignore), texts=texts, max_seq_length=max_seq_length,
                      **extra)
    if out_dir is None:
        final = cache_dir() / "candidates" / sha256_dir(hf_dir)[:12] / f"{scheme}-{key}"
    else:
        final = Path(out_dir)
        if (final / "config.json").is_file():
            return final
        if final.exists() and any(final.iterdir()):
            raise InputError(final, "exists, is not empty and has no config.json; refusing to overwrite")
        if final.exists():
            final.rmdir()

    def build(tmp: Path) -> None:
        # the producer's INFO logs, progress bars and warnings would bury our display: they go to a log
        with output_to(tmp / "producer.log"):
            _run_producer(hf_dir, scheme, tmp, texts, list(ignore), max_seq_length, pipeline)

    return build_atomic(final, build)


def calibration_pipeline(cfg: dict[str, Any]) -> str | None:
    """llmcompressor's calibration pipeline for this config: None (its default) unless the default cannot run it.

    Gemma 4 with shared-KV layers (``num_kv_shared_layers`` > 0, E2B/E4B): llmcompressor 0.14's
    sequential pipeline runs each decoder layer as a traced subgraph and does not carry
    transformers' ``shared_kv_states`` from the source layers to the sharing ones (KeyError
    'sliding_attention' in ``Gemma4TextAttention.forward``); the "basic" pipeline runs the whole
    model per calibration sample and does.
    """
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    if str(text.get("model_type", "")).startswith("gemma4") and int(text.get("num_kv_shared_layers") or 0) > 0:
        return "basic"
    return None


def _run_producer(hf_dir: Path, scheme: str, out: Path, texts: tuple[str, ...], ignore: list[str],
                  max_seq_length: int, pipeline: str | None = None) -> None:
    import compressed_tensors
    import llmcompressor
    import transformers
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.process_time()
    w0 = time.perf_counter()
    # "auto" keeps the checkpoint's dtype (BF16 for the real model), as the observed run did.
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=ignore)
    oneshot(
        model=model,
        recipe=recipe,
        dataset=_calibration_dataset(texts),
        processor=tokenizer,
        num_calibration_samples=len(texts),
        max_seq_length=max_seq_length,
        shuffle_calibration_samples=False,
        log_dir=None,
        **({"pipeline": pipeline} if pipeline else {}),
    )
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    (out / "layerbisect-producer.json").write_text(json.dumps({
        "source": str(hf_dir),
        "scheme": scheme,
        "ignore": ignore,
        "calibration_texts": list(texts),
        "max_seq_length": max_seq_length,
        "pipeline": pipeline or "default",
        "llmcompressor": llmcompressor.__version__,
        "compressed_tensors": compressed_tensors.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "cpu_seconds": round(time.process_time() - t0, 1),
        "wall_seconds": round(time.perf_counter() - w0, 1),
    }, indent=1))


def quantization_summary(ckpt_dir: str | Path) -> dict[str, Any]:
    """What a candidate checkpoint's config says: format, per-group weight/input-activation args.

    Used by the tests that pin the producer's output against the spec table.
    """
    cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    qc = cfg.get("quantization_config")
    if not qc:
        raise InputError(ckpt_dir, "no quantization_config in config.json")
    return qc
