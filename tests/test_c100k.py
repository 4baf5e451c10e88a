"""C100K in the suite: the box's limits read, points past them stopped (before or in
their run) with the reason, sockstat parsed, and the "where each model breaks" report.

The real points are a hundred thousand connections; here a lowered descriptor
limit (tests/c100k_small.py) makes a few hundred reach the same edges.
"""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import limits
from bench.report.build import run as report_run
from bench.report.measures import Run
from bench.results import load_results
from bench.run import capacity
from bench.run.scenarios import SCENARIOS
from bench.sample import sockstat
from tests import fake_results
from tests.support import ROOT

BOX = capacity.Box(nofile=20000, pid_max=32768, threads_max=192000, tasks=200,
                   mem_available=24 << 30, ports=28232)


# -- sockstat ---------------------------------------------------------------

def test_sockstat_reads_the_real_file_and_counts_a_held_connection():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        before = sockstat.read()
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            now = sockstat.read()
    for reading in (before, now):
        assert set(sockstat.TCP_KEYS) <= reading.keys()
        assert reading["mem_bytes"] == reading["mem"] * sockstat.PAGE
        assert all(isinstance(v, int) and v >= 0 for v in reading.values())
    assert now["alloc"] >= 2  # the two ends held at that moment
    if "slab_bytes" in now:  # root reads /proc/slabinfo
        assert now["slab_bytes"] > 0


def test_sockstat_parse_and_per_connection_flags_noise():
    text = ("sockets: used 38\nTCP: inuse 22 orphan 1 tw 1736 alloc 24 mem 156\n"
            "UDP: inuse 0 mem 0\n")
    got = sockstat.parse_sockstat(text)
    assert got == {"sockets_used": 38, "inuse": 22, "orphan": 1, "tw": 1736, "alloc": 24,
                   "mem": 156, "mem_bytes": 156 * sockstat.PAGE}
    slab = ("TCP  78 130 2368 13 8 : tunables 0 0 0 : slabdata 10 10 0\n"
            "kmalloc-64 1000 1000 64 64 1 : tunables 0 0 0 : slabdata 1 1 0\n")
    assert sockstat.parse_slabinfo(slab) == 78 * 2368
    before, after = {"mem_bytes": 0, "slab_bytes": 1000}, {"mem_bytes": 4096, "slab_bytes": 9000}
    assert sockstat.per_connection(before, after, 4) == (4096 + 8000) / 4
    assert sockstat.per_connection(after, before, 4) is None  # shrank: noise, not a cost
    assert sockstat.per_connection(before, after, 0) is None


# -- capacity ---------------------------------------------------------------

@pytest.mark.parametrize(("model", "n", "workers", "words"), [
    ("select", 1024, None, "refused by design"),
    ("epoll", 30000, None, "descriptor limit 20,000 per process"),
    ("threadpool", 30000, 2, "descriptor limit"),  # threads share one process's table
    ("thread", 30000, None, "descriptor limit"),
    ("fork", 30000, None, "pids"),
    ("fork", 20000, None, "memory"),  # 20 GiB of children against 24 GiB free
])
def test_refusal_names_the_limit(model, n, workers, words):
    why = capacity.refusal(model, {"clients": n}, n, workers, BOX, generator_sources=True)
    assert why is not None and words in why


def test_points_that_fit_run_and_the_limit_itself_is_tried():
    # At exactly the limit the point runs: it shows how many the model holds there.
    assert capacity.refusal("epoll", {"idle": 20000}, 20010, None, BOX, True) is None
    assert capacity.refusal("select", {"clients": 1000}, 1000, None, BOX, True) is None
    # Enough worker processes spread 100,000 under each one's limit.
    assert capacity.refusal("reuseport", {"clients": 100000}, 100000, 7, BOX, True) is None
    assert "ports" in capacity.refusal("reuseport", {"clients": 100000}, 100000, 7, BOX, False)


def test_generator_processes_stay_under_their_descriptor_limit():
    assert capacity.generator_procs(1000, BOX, 1) == 1
    assert capacity.generator_procs(1000, BOX, 3) == 3
    assert capacity.generator_procs(100010, BOX, 1) == 6
    # A quarter of each source's ports at most: connect's port search stays quick.
    assert capacity.sources(7000, BOX) is None
    assert capacity.sources(20010, BOX) == "127.0.0.2-127.0.0.4"
    assert capacity.sources(100010, BOX) == "127.0.0.2-127.0.0.16"


def test_limits_stop_larger_points_and_a_time_out_its_own():
    stops = capacity.Limits()
    stops.record("c100k", "epoll", 20000, "descriptor limit", inclusive=False)
    assert stops.past("c100k", "epoll", 20000) is None  # the other scenario still runs it
    assert stops.past("c100k", "epoll", 30000).text() == "stopped at 20,000: descriptor limit"
    assert stops.past("c100k", "poll", 30000) is None
    stops.record("c100k", "polling", 10000, "time-out", inclusive=True)
    assert stops.past("c100k", "polling", 10000) is not None


def test_c100k_scenarios_are_in_the_full_suite_only_unless_named():
    for name in ("c100k_idle", "c100k_sparse"):
        scenario = SCENARIOS[name]
        assert scenario.runs_in == ("full",) and scenario.family == "c100k"
        ns = [capacity.size(p.params) for p in scenario.suites["full"]]
        assert ns == [1000, 10000, 20000, 30000, 100000]
        assert [p.params["workers"] for p in scenario.suites["full"]] == [1, 1, 2, 2, 7]


# -- the suite, for real, under a lowered limit ------------------------------

def _small_run(tmp_path: Path, nofile: int, counts: str, models: str) -> dict:
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "tests.c100k_small", str(nofile), counts, "--suite", "quick",
         "--scenarios", "c100k_idle,c100k_sparse", "--models", models, "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return load_results(out / "latest")


def _by_point(results: dict) -> dict[tuple[str, int], dict]:
    return {(t["scenario"], capacity.size(t["point"])): t for t in results["trials"]}


def test_a_point_past_the_limit_is_stopped_before_it_runs_and_the_run_goes_on(tmp_path):
    results = _small_run(tmp_path, 300, "100,400,800", "epoll")
    assert results["status"] == "complete"
    trials = _by_point(results)
    for scenario in ("c100k_idle", "c100k_sparse"):
        assert trials[(scenario, 100)]["status"] == "ok"
        assert trials[(scenario, 100)]["load"]["connected"] == 100 + (
            3 if scenario == "c100k_sparse" else 0)
        for n in (400, 800):
            stopped = trials[(scenario, n)]
            assert stopped["status"] == "stopped"
            assert stopped["stopped"]["before_run"] is True and stopped["load"] is None
            assert stopped["reason"].startswith("stopped at 400: descriptor limit 300 per process")
    ok = trials[("c100k_idle", 100)]
    assert ok["sockstat"]["before"] and ok["sockstat"]["window"]
    assert all(t["cleanup"] is None or t["cleanup"]["leftover_procs"] == 0
               for t in results["trials"])


def test_a_model_that_holds_fewer_than_asked_is_stopped_with_its_reason(tmp_path):
    # 290 connections fit in 300 descriptors beside the server's own; 300 do not.
    results = _small_run(tmp_path, 300, "290,300,600", "epoll,select")
    trials = {(t["scenario"], t["model"], capacity.size(t["point"])): t
              for t in results["trials"]}
    for model in ("epoll", "select"):
        at_limit = trials[("c100k_idle", model, 300)]
        assert at_limit["status"] == "stopped" and not at_limit["stopped"]["before_run"]
        assert "descriptor limit: held" in at_limit["reason"]
        assert 250 < at_limit["load"]["connected"] < 300  # measured, and kept
        past = trials[("c100k_idle", model, 600)]
        assert past["stopped"]["before_run"] and past["reason"].startswith("stopped at 300:")
    table = limits.limits_table(Run(results))
    held = {row[0][0]: int(row[1][0].replace(",", "")) for row in table.rows}
    assert 250 < held["epoll"] < 300


# -- the report, from a synthetic run ---------------------------------------

def _synthetic() -> dict:
    meta = {"c100k_idle": {"title": "C100K idle", "x": "clients", "x_label": "idle connections",
                           "workload": "idle", "protocol": "echo", "log_x": True},
            "c100k_sparse": {"title": "C100K sparse", "x": "idle",
                             "x_label": "idle connections (10 active)", "workload": "sparse",
                             "protocol": "echo", "log_x": True}}
    cpu = {"epoll": {1000: 5.8, 10000: 5.9, 20000: 6.1}, "poll": {1000: 22.0, 10000: 300.0}}
    trials = []
    for model, per_n in cpu.items():
        for n, us in per_n.items():
            held = n - 8 if n == 20000 else n
            status = "stopped" if n == 20000 else "ok"
            reason = "stopped at 20,000: descriptor limit: held 19,992 of 20,000" \
                if status == "stopped" else None
            for scenario, point in (("c100k_idle", {"clients": n}),
                                    ("c100k_sparse", {"idle": n, "active": 10})):
                load = fake_results.load_object(held, latency_us={"p99": 100.0 + n / 100})
                t = fake_results.trial(scenario, model, point, 0, status=status, reason=reason,
                                       load=load, derived={
                                           "cpu_per_msg_us": us, "pss_per_conn_bytes": 300.0,
                                           "kernel_mem_per_conn_bytes": 4000.0})
                if status == "stopped":
                    t["stopped"] = {"at": n, "why": "descriptor limit", "inclusive": False,
                                    "before_run": False}
                trials.append(t)
    trials.append(fake_results.trial("c100k_idle", "poll", {"clients": 20000}, 0,
                                     status="stopped", load={},
                                     reason="stopped at 20,000: time-out"))
    results = fake_results.run(trials)
    results["scenarios"].update(meta)
    return results


def test_limits_table_and_sentences_read_the_figures():
    run = Run(_synthetic())
    table = limits.limits_table(run)
    rows = {row[0][0]: row for row in table.rows}
    assert rows["epoll"][1] == ["19,992"]
    assert "descriptor limit" in rows["epoll"][2][0]
    assert rows["poll"][2] == ["stopped at 20,000: time-out"]
    assert rows["epoll"][3] == ["300 B at 20,000"] and rows["epoll"][4] == ["3.91 KiB at 20,000"]
    assert rows["epoll"][5] == ["n/a"]  # no generator memory in this run
    assert rows["epoll"][7][0].startswith("1,000: 5.80 µs / ")
    text = " ".join(table.sentences)
    assert "epoll: CPU per active message 5.80 µs with 1,000 idle, 6.10 µs with 20,000 " \
           "(1.05x; within 1.2x" in text
    assert "poll: CPU per active message 22.0 µs with 1,000 idle, 300 µs with 10,000 " \
           "(13.6x; it grows" in text


def test_a_generator_bound_point_is_a_bound_and_no_stop():
    results = _synthetic()
    for n, us in ((1000, 9.0), (100000, 14.0)):
        t = fake_results.trial("c100k_sparse", "prefork", {"idle": n, "active": 10}, 0,
                               status="invalid", reason="load generator saturated its CPUs",
                               load=fake_results.load_object(n),
                               derived={"cpu_per_msg_us": us})
        t["generator_bound"] = True
        results["trials"].append(t)
    results["trials"].append(fake_results.trial(
        "c100k_sparse", "prefork", {"idle": 10000, "active": 10}, 0, status="ok",
        load=fake_results.load_object(10000, latency_us={"p99": 150.0}),
        derived={"cpu_per_msg_us": 8.0}))
    rows = {row[0][0]: row for row in limits.limits_table(Run(results)).rows}
    assert rows["prefork"][1] == ["100,000"]
    assert rows["prefork"][2] == ["held every point"]
    assert rows["prefork"][7] == ["1,000: ≤ 9.00 µs (generator-bound)",
                                  "10,000: 8.00 µs / 150 µs",
                                  "100,000: ≤ 14.0 µs (generator-bound)"]
    # A bound is no exact figure: growth reads the one exact point alone, so says nothing.
    assert limits.growth(Run(results), "prefork") is None


def test_report_writes_the_section_and_the_plot(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(_synthetic()))
    args = type("Args", (), {"run": str(run_dir), "root": str(tmp_path), "quiet": True,
                             "plots": str(tmp_path / "plots")})
    assert report_run(args) == 0
    report = (run_dir / "REPORT.md").read_text()
    assert "## Where each model breaks" in report
    assert f"plots/{limits.PLOT_NAME}.png" in report
    png = run_dir / "plots" / f"{limits.PLOT_NAME}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_lowered_limit_is_what_children_inherit():
    # What tests/c100k_small.py relies on: a hard limit set is the one read.
    script = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (300, 300)); "
              "from bench.run.capacity import Box; print(Box.read().nofile)")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "300"
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[1] >= 300
