"""Restore search: the greedy bookkeeping on a synthetic cost, and a real search whose first step is checked
against a file llama.cpp's quantizer writes with that tensor kept (``--tensor-type``)."""

from __future__ import annotations

import re

import pytest

from layerbisect.restore import Scorer, greedy, restore_search

PROMPT = "The capital of France is Paris, and the capital of Italy is"


def test_greedy_on_an_additive_cost_takes_the_biggest_first() -> None:
    cost = {"a": 5.0, "b": 3.0, "c": 1.0, "d": 0.5}
    total = sum(cost.values())

    def f(s: frozenset[str]) -> float:
        return total - sum(cost[x] for x in s)

    path = greedy(list(cost), f, 3)
    assert [x for x, _ in path] == ["a", "b", "c"] and path[-1][1] == pytest.approx(0.5)
    # with a pool of 2 ranked by a prior that misranks "a", the pool still finds it once it is in the pool
    prior = {"a": 9.0, "b": 1.0, "c": 2.0, "d": 3.0}
    assert [x for x, _ in greedy(list(cost), f, 2, pool=2, prior=prior)] == ["b", "c"]


def test_greedy_sees_interactions() -> None:
    """x and y only help together (an interaction a single-restore ranking misses)."""
    def f(s: frozenset[str]) -> float:
        return 1.0 - (0.9 if {"x", "y"} <= s else 0.0) - (0.2 if "z" in s else 0.0)

    assert [x for x, _ in greedy(["x", "y", "z"], f, 1)] == ["z"]
    assert [x for x, _ in greedy(["x", "y", "z"], f, 3)][:2] == ["z", "x"]


@pytest.mark.slow
def test_real_search_and_llamacpp_agree(llamacpp_tiny) -> None:
    from layerbisect.api import open_runner, resolve_tokens
    from layerbisect.producers.gguf_quants import quantized_gguf

    ref = open_runner(llamacpp_tiny["F32"]).activate()
    cand = open_runner(llamacpp_tiny["Q2_K"], role="candidate").activate()
    ids = resolve_tokens(ref, PROMPT, None)
    res = restore_search(ref, cand, ids, steps=2, pool=3)
    assert res.baseline.mean_kld > 0.1
    assert {r["cand_type"] for r in res.types} == {"Q2_K", "Q3_K", "Q6_K"}
    assert len(res.single) == 16 and res.path[0]["unit"] == res.single[0]["unit"]
    assert res.roles[-1]["mean_kld"] == 0.0 and res.roles[-1]["tensors"] == 16  # everything restored: the reference
    assert res.path[1]["mean_kld"] <= res.path[0]["mean_kld"]
    first = next(u for u in res.units if u.name == res.path[0]["unit"])
    assert first.added_bytes > 0 and first.ref_type == "F32"
    # llama.cpp writes the same file with that tensor kept at F32: its KL is the predicted one, bit for bit
    kept = quantized_gguf(llamacpp_tiny["F32"], "Q2_K", tensor_types={re.escape(first.tensor[:-7]): "F32"})
    other = open_runner(kept, role="candidate").activate()
    measured = Scorer(ref, other, ids, {})(frozenset())
    assert measured.mean_kld == res.path[0]["mean_kld"], (measured, res.path[0])
