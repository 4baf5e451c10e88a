"""The "past the textbook" table: the newer models against epoll and uvloop, from the run's own
trials, with system calls from the `syscalls` scenario and the workers each trial was given."""

from __future__ import annotations

import copy

import pytest

from bench.report.build import build_tables, render_markdown
from bench.report.measures import Run
from bench.report.textbook import textbook_table
from tests.report_markdown import close, expected_median, fixture, parse_tables

SYSCALLS = {"epoll": 2.0, "uvloop": 2.1, "uring": 0.05, "prefork": 2.05}
CPU_SCALE = {"uvloop": 0.9, "uring": 1.6, "prefork": 1.1}  # against epoll's trials


def _with_newer_models() -> dict:
    """The fixture, plus uvloop, uring and prefork made from epoll's trials at other costs,
    and a `syscalls` scenario with known counts."""
    results = fixture()
    epoll = [t for t in results["trials"] if t["model"] == "epoll"]
    for model, factor in CPU_SCALE.items():
        for t in epoll:
            new = copy.deepcopy(t)
            new["model"] = model
            new["workers"] = 2 if model == "prefork" else None
            if new["derived"].get("cpu_per_msg_us") is not None:
                new["derived"]["cpu_per_msg_us"] *= factor
            results["trials"].append(new)
    results["scenarios"]["syscalls"] = {**results["scenarios"]["echo_clients"],
                                        "title": "System calls per message"}
    for model, calls in SYSCALLS.items():
        for repeat, jitter in enumerate((0.98, 1.0, 1.03)):
            received = 10_000
            results["trials"].append({
                "scenario": "syscalls", "model": model, "protocol": "echo",
                "point": {"clients": 50, "size": 64}, "repeat": repeat, "status": "ok",
                "reason": None, "workers": 2 if model == "prefork" else None,
                "server": {"cpu_s": 0.07, "wall_s": 0.5, "cpu_util": 0.14,
                           "syscalls": round(calls * jitter * received)},
                "derived": {"syscalls_per_msg": calls * jitter,
                            "cpu_per_msg_us": 7.0 * CPU_SCALE.get(model, 1.0)},
                "load": {"received": received, "latency_us": {"p99": 100.0}}})
    return results


def test_the_table_holds_the_runs_medians_and_the_workers_given():
    results = _with_newer_models()
    table = textbook_table(Run(results))
    markdown = render_markdown(Run(results), *build_tables(Run(results)), plots={})
    columns, rows = parse_tables(markdown)[table.title]
    assert [r[0] for r in rows] == ["epoll", "uvloop", "prefork", "uring"]
    calls = next(c for c in columns if c.startswith("system calls per message"))
    cpu = next(c for c in columns if c.startswith("CPU per message"))
    x = 1000  # the largest cpu_vs_clients point every one of them measured
    assert cpu.endswith(f"= {x:,}")
    for row in rows:
        model = row[0]
        assert float(row[columns.index(calls)].split()[0]) == pytest.approx(SYSCALLS[model],
                                                                           rel=5e-3)
        expected = expected_median(results, "cpu_vs_clients", model, x,
                                   "derived.cpu_per_msg_us")
        assert close(float(row[columns.index(cpu)].split()[0]), expected)
        assert row[columns.index("workers")] == ("2" if model == "prefork" else "-")


def test_the_sentences_follow_the_numbers():
    table = textbook_table(Run(_with_newer_models()))
    uring = next(s for s in table.sentences if s.startswith("With 50 clients io_uring"))
    assert "0.0500 system calls per message against epoll's 2.00 (40.0x fewer)" in uring
    assert "(1.60x epoll's)" in uring
    scaled = next(s for s in table.sentences if "CPU per message against epoll's" in s)
    assert scaled.endswith("prefork 1.10x, uring 1.60x.")


def test_a_run_without_them_says_so():
    table = textbook_table(Run(fixture()))
    assert table.rows == []  # the yardsticks alone would repeat the other tables
    assert table.notes == ["None of the models past the textbook was measured in this run."]
    assert table.sentences == []
