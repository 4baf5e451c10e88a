"""A trial whose load generator ran out of CPU, and nothing else went wrong, is a bound.

The verdict is read from the load generator's real summary (loadgen/summary.py)
of constructed worker results, through the harness's real classify().
"""

from __future__ import annotations

from array import array

import pytest

from bench.results import ResultsError, load_results
from bench.run.outcome import classify, generator_bound
from loadgen.engine import Config, Outcome
from loadgen.integrity import Window
from loadgen.schedule import LATE_NS
from loadgen.summary import build
from tests import fake_results as fake

DURATION = 2.0
FINISHED = {"timed_out": False, "exit_status": 1, "stderr": "", "timeout_s": 30.0}


def _samples(values: list[int]) -> bytes:
    return array("q", values).tobytes()


def generator_summary(busy: float, *, rate: float | None = None, late: int = 0,
                      lost: int = 0, errors: int = 0, missing_workers: int = 0) -> dict:
    """`muxbench load --json` of one worker on one CPU that was `busy` of the window,
    with `late` of its 100 own sends more than LATE_NS behind (open loop only)."""
    cfg = Config(workload="echo", host="127.0.0.1", port=1, clients=10, size=64, rate=rate,
                 arrival="constant", depth=1, duration=DURATION, warmup=0.5, procs=1, active=1,
                 connect_timeout=1.0, drain=0.1, seed=1, cpus=[0])
    messages = 1000
    worker = {"tally": {"sent": messages, "received": messages - lost, "lost": lost,
                        "corrupted": 0, "duplicated": 0, "reordered": 0},
              "errors": {"ECONNRESET": errors} if errors else {},
              "latency": _samples([50_000] * (messages - lost)),
              "service": _samples([40_000] * (messages - lost)) if rate else b"",
              "own_lag": (_samples([2 * LATE_NS] * late + [1000] * (100 - late))
                          if rate else b""),
              "cpu_ns": int(busy * DURATION * 1e9), "late_sends": late, "max_lag_ns": 0}
    outcome = Outcome(results=[worker], connected=10, window=Window(0, int(DURATION * 1e9)),
                      clock_offset=0.0, missing_workers=missing_workers,
                      procs=1 + missing_workers)
    return build(cfg, outcome)


def verdict(load: dict) -> tuple[str, bool]:
    status, _ = classify("echo", load, FINISHED, None, "")
    return status, generator_bound(status, load)


def test_a_generator_that_only_ran_out_of_cpu_makes_a_bound():
    load = generator_summary(0.99)
    assert load["valid"] is False and "saturated" in load["invalid_reason"]
    assert verdict(load) == ("invalid", True)
    # Open loop, schedule kept (2 of 100 sends late is under the generator's limit).
    assert verdict(generator_summary(0.99, rate=500.0, late=2)) == ("invalid", True)


@pytest.mark.parametrize("broken, status", [
    ({"lost": 3}, "failed"),
    ({"errors": 2}, "failed"),
    ({"rate": 500.0, "late": 40}, "invalid"),  # it offered less than the point names
    ({"missing_workers": 1}, "invalid"),  # it counted only part of the load
])
def test_a_saturated_generator_with_anything_else_wrong_is_no_bound(broken, status):
    assert verdict(generator_summary(0.99, **broken)) == (status, False)


def test_a_generator_with_cpu_to_spare_is_ok_and_no_bound():
    assert verdict(generator_summary(0.5)) == ("ok", False)


def test_generator_bound_must_be_a_boolean_in_a_results_file(tmp_path):
    results = fake.healthy_run(repeats=1)
    results["trials"][0]["generator_bound"] = True
    assert load_results(fake.write(results, tmp_path / "good"))["trials"][0]["generator_bound"]
    results["trials"][0]["generator_bound"] = "yes"
    with pytest.raises(ResultsError, match="generator_bound"):
        load_results(fake.write(results, tmp_path / "bad"))
