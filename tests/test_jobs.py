"""``jobs.py``: the stages after the capture passes run at once or in order, with the same results."""

from __future__ import annotations

import threading

import pytest

from layerbisect.jobs import Jobs, map_devices


@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential", "concurrent"])
def test_jobs_results_and_timings(concurrent: bool) -> None:
    order: list[str] = []
    timings: dict[str, float] = {}
    jobs = Jobs(concurrent, timings)
    jobs.submit("a", lambda: jobs.timed("a", lambda: order.append("a") or 1))
    jobs.submit("b", lambda: order.append("b") or 2)
    try:
        assert "a" in jobs and "c" not in jobs
        if not concurrent:
            assert order == []  # nothing runs before it is asked for: the sequential pipeline's order
        assert jobs.result("b") == 2 and jobs.result("a") == 1 and jobs.result("a") == 1
        if not concurrent:
            assert order == ["b", "a"]
        assert set(timings) == {"a"} and timings["a"] >= 0
    finally:
        jobs.close()


def test_job_error_is_raised_by_result() -> None:
    jobs = Jobs(True, {})
    jobs.submit("boom", lambda: 1 / 0)
    jobs.close()
    with pytest.raises(ZeroDivisionError):
        jobs.result("boom")


@pytest.mark.parametrize("devices", [["cpu"], ["cpu", "cpu"], ["cpu", "cpu", "cpu"]], ids=lambda d: f"{len(d)}dev")
def test_map_devices_keeps_the_order(devices: list[str]) -> None:
    seen: set[int] = set()

    def fn(x: int, dev: str) -> tuple[int, str]:
        seen.add(threading.get_ident())
        return x * x, dev

    out = map_devices(fn, list(range(50)), devices)
    assert [v for v, _ in out] == [x * x for x in range(50)]
    assert {d for _, d in out} <= set(devices)
    if len(devices) == 1:
        assert seen == {threading.get_ident()}  # one device: no thread at all
