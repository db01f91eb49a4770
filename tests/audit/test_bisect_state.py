"""The module bisect as a pure state machine: run counts, minimal culprit sets, the two end checks."""

from __future__ import annotations

import math

import pytest

from layerbisect.bisect_modules import ModuleBisect
from layerbisect.errors import InputError


def drive(names: list[str], culprits: set[str]) -> ModuleBisect:
    """Oracle: a run fails iff any culprit stays quantized; count the runs through the state machine."""
    b = ModuleBisect(names)
    bound = b.remaining()
    while not b.done:
        q = b.query()
        b.step(not (set(q) & culprits))
        assert b.runs <= 200
    assert bound >= 1
    return b


@pytest.mark.parametrize("m", [1, 2, 7, 14, 126, 1000])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_single_culprit_takes_log2_runs(m: int, where: str) -> None:
    names = [f"layers.{i // 7}.op{i % 7}" for i in range(m)]
    c = {"first": names[0], "middle": names[m // 2], "last": names[-1]}[where]
    b = drive(names, {c})
    assert b.culprits == [c] and b.verdict == "culprits"
    # two end checks + the binary search + one check that the culprit alone fails
    assert b.runs <= 2 + math.ceil(math.log2(m)) + 1, b.runs


def test_two_culprits_are_both_found() -> None:
    names = [f"m{i}" for i in range(64)]
    b = drive(names, {"m5", "m40"})
    # with a failing-if-any oracle, one culprit alone already fails: the minimal set is the first found
    assert b.culprits == ["m5"]


def test_and_culprits_need_both() -> None:
    """Failure only when both stay quantized (errors that add up): both are reported."""
    names = [f"m{i}" for i in range(32)]
    b = ModuleBisect(names)
    while not b.done:
        q = set(b.query())
        b.step(not {"m3", "m20"} <= q)
    assert sorted(b.culprits) == ["m20", "m3"]
    assert b.runs <= 2 * (math.ceil(math.log2(32)) + 1) + 2


def test_failure_outside_the_linears_stops_after_one_run() -> None:
    b = ModuleBisect(["a", "b", "c"])
    assert b.query() == []
    assert b.step(False) is True
    assert b.verdict == "not_in_linears" and b.culprits == [] and b.remaining() == 0
    with pytest.raises(RuntimeError):
        b.query()


def test_everything_passes() -> None:
    b = ModuleBisect(["a", "b"])
    b.step(True)
    assert b.query() == ["a", "b"]
    assert b.step(True) is True and b.verdict == "all_pass"


def test_remaining_bounds_the_runs() -> None:
    names = [f"m{i}" for i in range(100)]
    b = ModuleBisect(names)
    first = b.remaining()
    while not b.done:
        before = b.remaining()
        b.step("m77" not in b.query())
        assert b.remaining() <= before
    assert b.runs <= first


def test_no_modules_is_bad_input() -> None:
    with pytest.raises(InputError):
        ModuleBisect([])
