"""The short fuzz run for CI: hundreds of mutated GGUF headers, safetensors headers, config.json and index files
through the real CLI, each bounded in time and memory (tests/fuzz/sandbox.py). 0 tracebacks, 0 hangs.

Fixed seed (``derandomize``), no example database, no shrinking budget spent unless a case fails; the long run
with its counts is tests/fuzz/long_run.py (docs/RELIABILITY.md).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from .cases import STRATEGIES, materialize, seed_sizes

EXAMPLES = {"gguf": 90, "safetensors": 70, "config": 70, "index": 30}  # 260 cases


@pytest.fixture(scope="module")
def seeds(tiny_quantized, tmp_path_factory):
    from layerbisect.producers.gguf_writer import write_gguf_from_hf
    from layerbisect.producers.tiny import make_tiny_hf

    gguf, fp8 = tiny_quantized("gemma3", "FP8")
    _, nvfp4 = tiny_quantized("gemma3", "NVFP4")
    root = tmp_path_factory.mktemp("fuzz-seeds")
    llama = write_gguf_from_hf(make_tiny_hf("llama", root / "llama-hf"), root / "llama.gguf", tensor_type="Q8_0")
    return {"gguf-gemma3": gguf, "gguf-llama": llama, "FP8": fp8, "NVFP4": nvfp4}


@pytest.mark.slow
@pytest.mark.parametrize("target", list(EXAMPLES))
def test_fuzz_no_traceback_no_hang(target, seeds, sandbox, tmp_path):
    sizes = seed_sizes(seeds)
    work = tmp_path / "case"
    seen: list[str] = []

    @settings(max_examples=EXAMPLES[target], deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(case=STRATEGIES[target](sizes))
    def one(case):
        argv = materialize(case, seeds, work)
        o = sandbox.run(argv, timeout=60)
        seen.append(o.verdict)
        assert o.verdict == "clean", f"{o.verdict} (exit {o.rc}, {o.seconds:.1f} s) for {case!r}:\n{o.stderr[-2500:]}"

    one()
    assert len(seen) >= EXAMPLES[target] * 0.9, f"only {len(seen)} cases ran"
