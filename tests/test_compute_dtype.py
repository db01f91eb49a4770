"""--compute-dtype (compute_dtype.py): every op on activations rounded to FP16/BF16; FP16 overflow is Inf."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from layerbisect.compute_dtype import install, parse
from layerbisect.errors import InputError


class _Layer(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 300.0 + 1e-4  # (B, T, D)


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Parameter(torch.tensor([[1.0, 100.0], [0.5, 250.0]]))
        self.layers = nn.ModuleList([_Layer()])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = nn.functional.embedding(ids, self.emb)
        for layer in self.layers:
            x = layer(x)
        return x


def test_fp16_overflows_where_fp32_does_not() -> None:
    m, ids = _Toy(), torch.tensor([0, 1])
    ref = m(ids)
    assert torch.isfinite(ref).all() and ref.abs().max() > 65504
    h = install(m, "fp16")
    out = m(ids)
    assert torch.isinf(out[1, 1]) and torch.isfinite(out[0, 1])  # 75 000 > 65 504 > 30 000
    assert out[0, 0] == torch.tensor(300.0 + 1e-4).half().float()  # rounded, not FP32
    assert out.dtype == torch.float32  # the graph stays FP32
    h.remove()
    assert torch.equal(m(ids), ref)


def test_bf16_rounds_and_layer_alone_rounds_its_input() -> None:
    m = _Toy()
    h = install(m, "bf16")
    x = torch.tensor([[1.0 + 2**-10]])
    assert m.layers[0](x).item() == torch.tensor(300.0).bfloat16().float().item()  # activation patching path
    h.remove()
    assert install(m, "fp32").handles == []


def test_parse() -> None:
    assert parse("float16") == "fp16" and parse("bf16") == "bf16"
    with pytest.raises(InputError, match="fp32, bf16, fp16"):
        parse("fp8")
