"""Triton GGUF dequantization: bit-exact with gguf-py (and so with the torch path), per type.

Tier: bit-exact (an encoding): equal float32 bits where both are numbers, NaN at the same
places (NaN payloads differ by platform). On CUDA the kernels run compiled, with FMA
contraction off; without CUDA the same kernels run in Triton's interpreter
(``TRITON_INTERPRET=1``, in a subprocess because the flag is read when kernels are defined).
The CUDA test also checks ``dequantize(impl="auto")`` takes the Triton path and that an odd
block count (a partial last program) and realistic scales give the same bits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as QT

from tests.references.test_gguf_dequant import _gguf_ref, assert_bit_exact, random_blocks

TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q2_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]
ROOT = Path(__file__).resolve().parents[2]


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not _has_triton(), reason="needs CUDA and Triton")
@pytest.mark.parametrize("finite", [True, False], ids=["finite-scales", "random-bytes"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_triton_bit_exact_on_cuda(qtype: QT, finite: bool) -> None:
    from layerbisect.kernels import gguf_triton
    from layerbisect.references.gguf_dequant import dequantize

    blocks_per_row = 4096 // 32 if gguf_triton.SUPPORTED[qtype][1] == 32 else 16
    raw = random_blocks(qtype, 67, blocks_per_row, finite=finite)  # 67 rows: a partial last program
    ref = _gguf_ref(raw, qtype)
    on_gpu = torch.from_numpy(raw).cuda()
    got = dequantize(on_gpu, qtype, impl="triton")
    assert got.is_cuda
    assert_bit_exact(got, ref, qtype, "triton")
    assert_bit_exact(dequantize(on_gpu, qtype, impl="auto"), ref, qtype, "auto on CUDA")
    assert_bit_exact(dequantize(on_gpu, qtype, impl="torch"), ref, qtype, "torch on CUDA")


@pytest.mark.skipif(not _has_triton(), reason="needs Triton (its interpreter runs on CPU)")
def test_triton_kernels_bit_exact_in_interpreter() -> None:
    code = textwrap.dedent(
        """
        import numpy as np, torch
        from gguf import GGMLQuantizationType as QT
        from layerbisect.kernels import gguf_triton
        from tests.references.test_gguf_dequant import _gguf_ref, assert_bit_exact, random_blocks
        for name in %r:
            qt = QT[name]
            bs, ts = gguf_triton.SUPPORTED[qt][1:3]
            for finite in (True, False):
                raw = random_blocks(qt, 3, 2048 // bs, finite=finite)
                got = gguf_triton.dequantize_blocks(torch.from_numpy(raw).reshape(-1, ts), qt)
                assert_bit_exact(got.reshape(raw.shape[0], -1), _gguf_ref(raw, qt), qt, "triton interpreter")
        print("ok")
        """
        % [t.name for t in TYPES]
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_impl_switch_on_cpu() -> None:
    from layerbisect.errors import InputError
    from layerbisect.references.gguf_dequant import dequantize

    raw = random_blocks(QT.Q4_K, 2, 2)
    a = dequantize(raw, QT.Q4_K, impl="auto")  # CPU: auto is the torch path
    assert torch.equal(a.view(torch.int32), dequantize(raw, QT.Q4_K, impl="torch").view(torch.int32))
    with pytest.raises(InputError, match="impl"):
        dequantize(raw, QT.Q4_K, impl="cuda")
    with pytest.raises(InputError, match="Triton"):
        dequantize(raw, QT.Q4_K, impl="triton")  # a CPU tensor has no Triton path
    assert np.isfinite(a.numpy()).all()
