"""The capture store's device copies (``Captures.on``): one copy per device, shared, remade when the points change."""

from __future__ import annotations

import threading

import pytest
import torch

from layerbisect.capture import Captures


def _store() -> Captures:
    caps = Captures(token_ids=[1, 2, 3])
    caps.record("embed", torch.arange(12.0).reshape(3, 4))
    caps.record("layers.0.out", torch.ones(3, 4))
    return caps


def test_on_the_cpu_is_the_store_itself():
    caps = _store()
    assert caps.on(None) is caps and caps.on("cpu") is caps


def test_one_copy_per_device_shared_by_every_caller():
    caps = _store()
    got: list[Captures] = []
    threads = [threading.Thread(target=lambda: got.append(caps.on("meta"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(g) for g in got}) == 1  # the threads share one copy
    mirror = got[0]
    assert list(mirror.tensors) == list(caps.tensors)
    assert all(t.device.type == "meta" for t in mirror.tensors.values())
    assert [t.shape for t in mirror.tensors.values()] == [t.shape for t in caps.tensors.values()]
    assert mirror.token_ids == caps.token_ids and mirror.on("meta") is mirror
    mirror.record("layers.1.out", torch.ones(3, 4))  # a copy records nothing
    assert "layers.1.out" not in mirror


def test_a_point_recorded_later_makes_a_new_copy():
    caps = _store()
    first = caps.on("meta")
    caps.record("layers.1.out", torch.zeros(3, 4))
    second = caps.on("meta")
    assert second is not first and "layers.1.out" in second.tensors


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_copy_holds_the_same_values():
    caps = _store()
    mirror = caps.on("cuda")
    assert mirror is caps.on(torch.device("cuda", torch.cuda.current_device()))
    for name, t in caps.tensors.items():
        assert mirror[name].is_cuda and torch.equal(mirror[name].cpu(), t)
