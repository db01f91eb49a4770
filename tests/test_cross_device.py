"""Reference and candidate on two devices, every stage on: generate, capture passes, comparison, localization,
both audits, the module bisect, resident and streamed (issue 14, item 4).

``--ref-device cuda:0 --cand-device cuda:1`` once crashed in the weight audit ("Expected all tensors to be on
the same device", in ``cos_sim``). ``--ref-device cpu --cand-device cuda`` crosses the same boundaries on a
machine with one GPU; with two GPUs ``cuda:0``/``cuda:1`` runs too. The candidates are the ModelOpt FP8 and
NVFP4 fixtures (``tests/data/modelopt``: no quantizer needed on the GPU machine) against an F32 GGUF of the
weights they were made from.

Tier: SQNR-level. The two-device run must find what the one-device CPU run finds (same findings, same
continuations, localization and audit rows for the same modules) with metrics within float32 noise of it
(the GPU's matmuls round differently from the CPU's).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DATA = Path(__file__).resolve().parent / "data" / "modelopt"
PROMPT = [1, 5, 9, 77, 300, 42, 17, 8, 99, 100, 3, 4]
METRIC_ATOL = 2e-3  # |Δ| of cosines, relative errors and α between a CPU run and a CPU+GPU run (float32 rounding)


def _device_pairs() -> list[tuple[str, str]]:
    pairs = [("cpu", "cuda")]
    if torch.cuda.device_count() >= 2:
        pairs.append(("cuda:0", "cuda:1"))
    return pairs


@pytest.fixture(scope="module", params=["fp8/llama", "nvfp4/gemma3"])
def models(request, tmp_path_factory) -> tuple[Path, Path]:
    from layerbisect.producers.gguf_writer import write_gguf_from_hf
    from layerbisect.producers.tiny import make_tiny_hf

    cand = DATA / request.param
    kw = dict(json.loads((cand / "fixture.json").read_text())["make_tiny_hf"])
    arch = kw.pop("arch")
    root = tmp_path_factory.mktemp(request.param.replace("/", "-"))
    hf = make_tiny_hf(arch, root / "hf", **kw)
    return write_gguf_from_hf(hf, root / "ref.gguf", tensor_type="F32"), cand


def _compare(models: tuple[Path, Path], **kw):
    import layerbisect
    from layerbisect.bisect_modules import bisect_report
    from layerbisect.pipeline import CompareOptions

    g, cand = models
    opts = CompareOptions(tokens=PROMPT, generate=3, localize=True, **kw)
    rep = layerbisect.compare(g, cand, options=opts)
    bisect_report(rep, g, cand, opts)
    return rep


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= METRIC_ATOL * max(1.0, abs(b))


@pytest.mark.parametrize("stream", [False, True], ids=["resident", "streamed"])
@pytest.mark.parametrize("devices", _device_pairs(), ids=lambda d: "+".join(d))
def test_two_devices_every_stage(models, devices: tuple[str, str], stream: bool) -> None:
    ref_dev, cand_dev = devices
    base = _compare(models, device="cpu", stream=stream)
    two = _compare(models, ref_device=ref_dev, cand_device=cand_dev, stream=stream)
    assert two.record.runtime.concurrent, "two devices: the passes run in two threads"
    assert {m.mode for m in two.record.runtime.memory} == {"stream" if stream else "resident"}, two.record.runtime
    _same_as_on_the_cpu(two, base)


def test_one_gpu_in_threads_every_stage(models) -> None:
    """Everything on one GPU, the jobs in threads as on two: the expected lane runs there too (its captures kept on
    the device, the reference's points copied there once: ``Captures.on``)."""
    base = _compare(models, device="cpu")
    gpu = _compare(models, device="cuda", concurrent=True)
    assert gpu.record.runtime.concurrent
    assert (gpu.record.noise is None) == (base.record.noise is None)
    if base.record.noise is not None:  # the lane's own errors, point by point, as on the CPU
        gp, bp = gpu.record.noise.points, base.record.noise.points
        assert [p.point for p in gp] == [p.point for p in bp] and gp
        bad = [a.point for a, b in zip(gp, bp) if not _close(a.expected_rel_l2, b.expected_rel_l2)]
        assert not bad, f"the expected lane differs on the GPU: {bad[:5]}"
    _same_as_on_the_cpu(gpu, base)


def _same_as_on_the_cpu(two, base) -> None:
    rec, brec = two.record, base.record
    assert rec.continuations == brec.continuations
    assert [f.kind for f in two.findings] == [f.kind for f in base.findings]

    # localization: one row per layer and per quantized linear, as on one device
    loc, bloc = rec.localization, brec.localization
    assert loc is not None and bloc is not None
    assert len(loc.layers) == len(bloc.layers) == two.comparison.info.n_layers
    for a, b in zip(loc.layers, bloc.layers):
        assert _close(a.local_rel_l2, b.local_rel_l2), (a, b)
    assert sorted(m.module for m in loc.modules) == sorted(m.module for m in bloc.modules)

    # audits: every tensor audited, with the one-device run's numbers
    aud, baud = rec.audits, brec.audits
    assert aud is not None and baud is not None
    rows = {r.name: r for r in aud.weights}
    brows = {r.name: r for r in baud.weights}
    assert rows.keys() == brows.keys() and rows
    bad = [n for n in rows for k in ("cosine", "rel_err", "alpha")
           if not _close(getattr(rows[n], k), getattr(brows[n], k))]
    assert not bad, f"weight audit differs across devices: {bad[:5]}"
    assert {n: r.status for n, r in rows.items()} == {n: r.status for n, r in brows.items()}
    assert len(aud.headroom) == len(baud.headroom)

    # the module bisect swapped reference linears into the candidate across the device boundary
    assert rec.bisect is not None and brec.bisect is not None
    assert rec.bisect.verdict == brec.bisect.verdict


def test_patch_linears_returns_host_tensors_from_two_devices(models) -> None:
    """Per-module patching feeds each side on its own device and compares on the host."""
    from layerbisect.api import open_runner
    from layerbisect.localize import patch_linears

    g, cand = models
    ref = open_runner(g, device="cpu").activate()
    c = open_runner(cand, device="cuda").activate()
    caps = ref.run(PROMPT)
    rows = patch_linears(caps, ref, c)
    assert rows and all(math.isfinite(r["cosine"]) for r in rows)
