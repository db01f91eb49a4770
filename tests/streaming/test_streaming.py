"""Layer streaming equals the resident run bit for bit, and keeps only ~one layer of weights alive.

Tier: bit-exact. A streamed pass runs the same modules on the same operands as the resident
pass (same dequantized bits, same ops), so every capture point must have equal bits on CPU,
for the reference (GGUF, Q8_0 and F32) and the candidate (HF checkpoint), capture pass and
greedy generation alike. Memory is checked with the streamer's own exact count of live
weight bytes (``LiveBytes``), not RSS.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from layerbisect.candidates.runner import CandidateRunner
from layerbisect.references.runner import ReferenceRunner
from layerbisect.streaming import (
    StreamedDecoder,
    decide_stream,
    estimate_fp32_bytes,
    layer_fp32_bytes,
    parse_bytes,
)

IDS = [1] + list(range(5, 29)) + [7, 7, 9]  # repeated ids: the embedding reads unique rows only
N_LAYERS = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """arch → {"hf": HF dir, "gguf": Q8_0 GGUF}: gemma3 (tied head, sandwich norms), llama (untied head)."""
    from layerbisect.producers.gguf_writer import write_gguf_from_hf
    from layerbisect.producers.tiny import make_tiny_hf

    root = tmp_path_factory.mktemp("stream")
    out = {}
    for arch in ("gemma3", "llama"):
        hf = make_tiny_hf(arch, root / arch, n_layers=N_LAYERS)
        out[arch] = {"hf": hf, "gguf": write_gguf_from_hf(hf, root / f"{arch}.gguf", tensor_type="Q8_0")}
    return out


def _runner(kind: str, path: Path, stream: bool | None, cap: int | None = None):
    r = ReferenceRunner(path) if kind == "reference" else CandidateRunner(path)
    r.stream, r.memory_cap = stream, cap
    return r.activate()


def _assert_same_captures(a, b, what: str) -> None:
    assert a.names() == b.names(), f"{what}: capture points differ"
    bad = []
    for n in a.names():
        x, y = a[n], b[n]
        if x.shape != y.shape or not torch.equal(x.view(torch.int32), y.view(torch.int32)):
            diff = (x - y).abs().max().item() if x.shape == y.shape else float("nan")
            bad.append(f"{n} (max |diff| {diff:.3g})")
    assert not bad, f"{what}: {len(bad)} points differ: {', '.join(bad[:6])}"


@pytest.mark.parametrize("kind", ["reference", "candidate"])
@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_streamed_equals_resident_bit_for_bit(tiny, arch: str, kind: str) -> None:
    path = tiny[arch]["gguf" if kind == "reference" else "hf"]
    res, st = _runner(kind, path, False), _runner(kind, path, True)
    assert isinstance(st.model, StreamedDecoder) and not isinstance(res.model, StreamedDecoder)
    assert st.streaming and not res.streaming
    _assert_same_captures(res.run(IDS), st.run(IDS), f"{arch} {kind} capture pass")
    assert res.generate(IDS, 3) == st.generate(IDS, 3)
    # one layer alive at a time: the peak is one layer's weights (embedding rows and head are smaller here)
    assert st.model.tracker.peak <= 1.05 * layer_fp32_bytes(st.config)
    assert st.model.tracker.total == 0, f"weights left alive after the pass: {st.model.tracker.live}"


def test_memory_cap_picks_streaming_and_bounds_live_bytes(tiny) -> None:
    path = tiny["llama"]["gguf"]
    cfg_bytes = None
    r = _runner("reference", path, None, cap=10**12)
    assert not r.streaming and "fits" in r.stream_reason
    cfg_bytes = estimate_fp32_bytes(r.config)
    layer = layer_fp32_bytes(r.config)
    cap = int(1.5 * layer)
    assert cfg_bytes > 4 * cap, "the model must be several times the cap for this test to mean anything"
    s = _runner("reference", path, None, cap=cap)
    assert s.streaming and ">" in s.stream_reason
    _assert_same_captures(r.run(IDS), s.run(IDS), "capped streaming")
    tr = s.model.tracker
    assert tr.peak <= 2 * layer, f"peak live weights {tr.peak} B > 2 layers ({2 * layer} B); at {tr.peak_at}"
    loads = [e for e, _ in tr.steps if e.startswith("+layer.")]
    assert loads == [f"+layer.{i}" for i in range(N_LAYERS)], loads
    # at every step, at most one layer is alive
    alive: set[str] = set()
    for event, _ in tr.steps:
        (alive.add if event[0] == "+" else alive.discard)(event[1:])
        assert sum(x.startswith("layer.") for x in alive) <= 1, alive


@pytest.mark.parametrize("arch", ["gemma3", "llama"])
def test_chunked_head_is_exact_on_cpu(tiny, arch: str) -> None:
    s = _runner("reference", tiny[arch]["gguf"], True)
    whole = s.run(IDS)
    before = len(s.model.tracker.steps)
    s.model.head_chunk_bytes = 4 * s.config.d_model * 100  # 100 vocabulary rows per chunk
    chunked = s.run(IDS)
    chunks = [e for e, _ in s.model.tracker.steps[before:] if e.startswith("+lm_head[")]
    assert len(chunks) == -(-s.config.vocab_size // 100), chunks
    _assert_same_captures(whole, chunked, "chunked lm_head")


def test_pipeline_streamed_and_concurrent_match(tiny) -> None:
    import layerbisect
    from layerbisect.pipeline import CompareOptions

    g, hf = tiny["gemma3"]["gguf"], tiny["gemma3"]["hf"]
    reports = {}
    for name, kw in {
        "resident": dict(stream=False),
        "stream": dict(stream=True),
        "stream+concurrent": dict(stream=True, concurrent=True),
    }.items():
        reports[name] = layerbisect.compare(g, hf, options=CompareOptions(tokens=IDS, generate=2, **kw))
    base = reports["resident"]
    for name, rep in reports.items():
        assert rep.record.continuations == base.record.continuations, name
        cols = ["point", "token", "cosine", "rel_l2", "max_abs"]
        cols = [c for c in cols if c in base.df.columns]
        a, b = base.df[cols].reset_index(drop=True), rep.df[cols].reset_index(drop=True)
        assert a.equals(b), f"{name}: comparison table differs from the resident sequential run"
        assert [f.kind for f in rep.findings] == [f.kind for f in base.findings], name
        rt = rep.record.runtime
        assert rt is not None and "host_rss" in rt.peak_memory_bytes
        mode = "stream" if "stream" in name else "resident"
        ref_mem, cand_mem = rt.memory_mode("reference"), rt.memory_mode("candidate")
        assert ref_mem.mode == mode and cand_mem.mode == mode, rt.memory
        if mode == "stream":
            assert ref_mem.peak_live_weight_bytes <= 1.05 * ref_mem.layer_fp32_bytes
        assert rt.concurrent == ("concurrent" in name)


def test_two_devices_default_to_concurrent(tiny) -> None:
    """ref on "cpu", candidate on "cpu:0": different device strings → the passes run in two threads."""
    import layerbisect
    from layerbisect.pipeline import CompareOptions

    g, hf = tiny["llama"]["gguf"], tiny["llama"]["hf"]
    seq = layerbisect.compare(g, hf, options=CompareOptions(tokens=IDS, generate=0, localize=False))
    two = layerbisect.compare(
        g, hf, options=CompareOptions(tokens=IDS, generate=0, localize=False, ref_device="cpu", cand_device="cpu:0")
    )
    assert two.record.runtime.concurrent and not seq.record.runtime.concurrent
    assert seq.df.drop(columns=[], errors="ignore").equals(two.df)


def test_decide_and_parse() -> None:
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("6GiB") == 6 * 2**30 and parse_bytes("1000") == 1000
    assert parse_bytes(None) is None
    from layerbisect.errors import InputError

    with pytest.raises(InputError):
        parse_bytes("lots")
    assert decide_stream(True, None, "cpu", None)[0] is True
    assert decide_stream(False, None, "cpu", 1)[0] is False
