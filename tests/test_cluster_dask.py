"""Suites on a Dask cluster: merged figures equal the sum over hosts, faults fail one trial.

Real schedulers, workers, servers and load generators on this machine: a
LocalCluster (`--cluster local`), a scheduler and workers started here as a
user would (`dask scheduler`, `dask worker --resources ...`) for the fault, and
namespaces made by `muxbench cluster up` where this machine allows them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from hdrh.histogram import HdrHistogram

from bench.cluster.clock import Offset, margin_ns, missed
from bench.cluster.merge import merge_loads, summary_from_hdr
from bench.cluster.share import shares, split_count
from bench.results import SCHEMA_VERSION, load_results, resolve_run
from bench.run.launch import free_port
from loadgen.record import hdr_encode
from muxbench import markers
from tests.conftest import run_bench
from tests.support import MUXBENCH, ROOT, kill_group, serve, spawn, wait_for

pytest.importorskip("distributed", reason="the 'cluster' extra (distributed) is not installed")
from distributed import Client  # only once it is known to be there

# Closed-loop points only: on a machine shared with other work an open-loop
# generator falls behind its schedule now and then, and its trial is rightly
# invalid (the local path's too).  Echo split over the hosts, connections
# cycling, and the sparse pattern kept whole on one host.
TINY = ["--suite", "quick", "--models", "epoll", "--scenarios",
        "echo_clients,churn,sparse,syscalls"]
DASK = str(Path(sys.executable).with_name("dask"))


def _hdr_count(encoded: str | None) -> int:
    return HdrHistogram.decode(encoded).get_total_count() if encoded else 0


def _check_merged(run_dir: Path, generators: int) -> dict:
    results = load_results(run_dir)
    assert results["schema_version"] == SCHEMA_VERSION == 2
    bad = [(t["scenario"], t["status"], t["reason"]) for t in results["trials"]
           if t["status"] != "ok"]
    assert not bad, bad
    # The server host accounts CPU as this machine does for a local trial.
    local_cpu = "cgroup" if results["environment"]["cpu_accounting"].startswith("cgroup") \
        else "psutil"
    for trial in results["trials"]:
        server, *gens = trial["hosts"]
        assert server["role"] == "server" and server["server"]["cpu_s"] > 0
        assert server["server"]["cpu_source"] == local_cpu
        if trial["scenario"] == "syscalls":  # counted on the server's host, in the window
            if shutil.which("perf"):
                assert trial["derived"]["syscalls_per_msg"] > 0.5, trial["reason"]
            else:
                assert "system calls not counted" in trial["reason"]
        assert trial["server"] == server["server"]
        assert trial["cleanup"]["leftover_fds"] == 0 and trial["cleanup"]["graceful"]
        assert trial["server"]["samples"] > 0  # memory read on the server host, as locally
        assert all(h["role"] == "generator" for h in gens) and gens
        if trial["scenario"] != "sparse":  # kept whole on one host
            assert len(gens) == generators
        loads = [h["load"] for h in gens]
        merged = trial["load"]
        for key in ("sent", "received", "clients", "connected"):
            assert merged[key] == sum(load[key] for load in loads), key
        count = _hdr_count(merged["hdr"]["latency"])
        assert count == sum(_hdr_count(load["hdr"]["latency"]) for load in loads) > 0
        assert merged["latency_us"]["count"] == count
        assert set(trial["clock_offsets"]) >= {h["host"] for h in trial["hosts"]}
        start, end = trial["window"]["start_ns"], trial["window"]["end_ns"]
        assert end > start
    return results


def test_tiny_suite_on_a_local_cluster_merges_exactly(tmp_path):
    status, err = run_bench(tmp_path, *TINY, "--cluster", "local", timeout=240)
    assert status == 0, err[-3000:]
    run_dir = resolve_run(None, tmp_path)
    results = _check_merged(run_dir, generators=max(2, len(os.sched_getaffinity(0)) - 1))
    assert {t["network"] for t in results["trials"]} == {"loopback"}
    assert results["environment"]["cluster"]["address"] == "local"
    done = subprocess.run([*MUXBENCH, "report", str(run_dir), "--plots", str(tmp_path / "p"),
                           "-q"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = (run_dir / "REPORT.md").read_text()
    assert "## Hosts" in report and "| gen2 | generator |" in report
    assert "### " in report.split("## Scenarios", 1)[1]  # the local report's sections follow


def _start(argv: list[str]) -> subprocess.Popen:
    return spawn(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _load_under(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return any("load" in p.cmdline() and "--start-at" in p.cmdline()
                   for p in psutil.Process(pid).children(recursive=True))
    return False


@pytest.fixture
def dask_hosts():
    """A scheduler and three workers (server, gen1, gen2) started as a user would,
    without nannies: a killed worker stays dead.  (address, {name: process})."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = {"scheduler": _start([DASK, "scheduler", "--host", "127.0.0.1", "--port",
                                  str(port), "--no-dashboard"])}
    try:
        for name, role in (("server", "server"), ("gen1", "generator"), ("gen2", "generator")):
            procs[name] = _start([DASK, "worker", address, "--name", name, "--no-nanny",
                                  "--nthreads", "2", "--no-dashboard", "--resources",
                                  f"{role}=1"])
        with Client(address, timeout=60) as client:  # every worker registered first
            client.wait_for_workers(3, timeout=60)
        yield address, procs
    finally:
        for proc in reversed(procs.values()):
            kill_group(proc)


def _bench_under_load(tmp_path: Path, address: str, watched: subprocess.Popen):
    """`muxbench bench --cluster` of two long trials, once a load generator runs
    under the worker `watched`."""
    bench = spawn([*MUXBENCH, "bench", "--out", str(tmp_path), "--cluster", address,
                   "--suite", "quick", "--models", "epoll", "--scenarios", "echo_clients",
                   "--repeats", "2", "--duration-scale", "5"],
                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: _load_under(watched.pid) or bench.poll() is not None, 90)
    assert bench.poll() is None, bench.stderr.read()
    return bench


def _nothing_left_under(workers: list[subprocess.Popen]) -> None:
    """No server, no load generator: no process under any worker."""
    def left() -> list[psutil.Process]:
        return [p for w in workers if w.poll() is None
                for p in psutil.Process(w.pid).children(recursive=True)]
    assert wait_for(lambda: not left(), 10), left()


def test_a_generator_host_lost_mid_trial_fails_that_trial_only(tmp_path, dask_hosts):
    address, hosts = dask_hosts
    bench = _bench_under_load(tmp_path, address, hosts["gen2"])
    try:
        os.kill(hosts["gen2"].pid, signal.SIGKILL)  # the host dies with its generator running
        _, err = bench.communicate(timeout=120)
    finally:
        kill_group(bench)
    assert bench.returncode == 0, err[-3000:]
    first, second = load_results(resolve_run(None, tmp_path))["trials"]
    assert first["status"] == "failed"
    assert "generator host gen2 lost" in first["reason"], first["reason"]
    assert second["status"] == "ok", second["reason"]
    assert [h["host"] for h in second["hosts"]] == ["server", "gen1"]
    _nothing_left_under([hosts["server"], hosts["gen1"]])


def test_ctrl_c_stops_every_remote_process(tmp_path, dask_hosts):
    address, hosts = dask_hosts
    bench = _bench_under_load(tmp_path, address, hosts["gen1"])
    try:
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=60)
    finally:
        kill_group(bench)
    assert bench.returncode == 130, err[-3000:]
    assert load_results(resolve_run(None, tmp_path))["status"] == "interrupted"
    _nothing_left_under([hosts[name] for name in ("server", "gen1", "gen2")])


def _cluster_command() -> bool:
    done = subprocess.run([*MUXBENCH, "cluster", "--help"], cwd=ROOT, capture_output=True,
                          timeout=60)
    return done.returncode == 0


def test_tiny_suite_on_namespace_hosts(tmp_path):
    if not _cluster_command():
        pytest.skip("`muxbench cluster` (hosts made of network namespaces) is not here yet")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    prefix = f"t{os.getpid() % 10**6}"
    up = subprocess.run([*MUXBENCH, "cluster", "up", "--generators", "2", "--prefix", prefix],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    try:
        if up.returncode != 0 and "namespace" in up.stderr.lower():
            pytest.skip(f"no network namespaces here: {up.stderr.strip()[-300:]}")
        assert up.returncode == 0, up.stderr
        address = up.stdout.strip().splitlines()[-1]
        status, err = run_bench(tmp_path, *TINY, "--cluster", address, timeout=240)
        assert status == 0, err[-3000:]
        results = _check_merged(resolve_run(None, tmp_path), generators=2)
        assert {t["network"] for t in results["trials"]} == {"veth"}
        for trial in results["trials"]:  # the server listened on its host's own address
            assert trial["hosts"][0]["address"].startswith("198.1")
    finally:
        down = subprocess.run([*MUXBENCH, "cluster", "down", "--prefix", prefix], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert prefix not in names and prefix not in links
    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if any(prefix in word for word in p.info["cmdline"] or [])]
    assert not left


def _load_at(port: int, start_at: int, warmup: float) -> tuple[dict, int | None]:
    """`muxbench load --start-at`: its JSON, and this clock when its window-start line came."""
    proc = spawn([*MUXBENCH, "load", "--port", str(port), "--clients", "2", "--duration",
                  "0.3", "--warmup", str(warmup), "--json", "--start-at", str(start_at)],
                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = None
        for line in proc.stderr:
            if line.strip() == markers.WINDOW_START:
                seen = time.time_ns()
        out, _ = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, out
    return json.loads(out), seen


def test_load_start_at_holds_the_window_to_the_instant_or_records_it_late():
    with serve("epoll") as server:
        start_at = time.time_ns() + 3 * 10**9
        load, seen = _load_at(server.port, start_at, warmup=0.1)
        assert load["window"]["start_ns"] == start_at
        assert load["window"]["end_ns"] == start_at + 300_000_000
        assert seen is not None and seen >= start_at  # it waited for the instant
        assert load["received"] > 0
        # An instant already past: the window opens after the warm-up, and says so.
        past = time.time_ns() - 10**9
        load, _ = _load_at(server.port, past, warmup=0.2)
        assert load["window"]["start_ns"] > past + 10**9


def test_counts_split_exactly_and_rates_in_proportion():
    assert split_count(10, 3) == [4, 3, 3] and sum(split_count(100_000, 7)) == 100_000
    parts = shares(["--workload", "echo", "--clients", "5", "--rate", "1000"], 3)
    assert [p[p.index("--clients") + 1] for p in parts] == ["2", "2", "1"]
    assert sum(float(p[p.index("--rate") + 1]) for p in parts) == pytest.approx(1000)
    assert len(shares(["--workload", "echo", "--clients", "1"], 4)) == 1
    chat = ["--workload", "chat", "--clients", "10"]
    assert shares(chat, 3) == [chat]


def test_merged_percentiles_come_from_the_added_histograms():
    import numpy as np

    fast, slow = np.full(900, 10_000, dtype=np.int64), np.full(100, 5_000_000, dtype=np.int64)
    loads = [{"sent": len(v), "received": len(v), "clients": 1, "connected": 1,
              "workload": "echo", "client_cpu_util": 0.5, "valid": True, "invalid_kinds": [],
              "hdr": {"latency": hdr_encode(v), "service_time": None}} for v in (fast, slow)]
    merged = merge_loads(loads, ["gen1", "gen2"], duration_s=2.0)
    assert merged["received"] == 1000 and merged["throughput_msgs_s"] == 500
    # Averaging the hosts' p99 would say ~2.5 ms; the merged histogram's p50 is 10 µs
    # and its p99 5 ms, as the 1000 samples together say.
    assert merged["latency_us"]["p50"] == pytest.approx(10, rel=1e-3)
    assert merged["latency_us"]["p99"] == pytest.approx(5000, rel=1e-3)
    assert merged["latency_us"] == summary_from_hdr(merged["hdr"]["latency"])


def test_version_1_results_still_load_and_a_local_run_has_no_hosts_table():
    from bench.report.hosts import hosts_table

    results = load_results(ROOT / "results" / "baseline" / "results.json")
    assert results["schema_version"] == 1 and results["trials"]
    assert hosts_table(results) is None


@pytest.mark.parametrize("args, message", [
    (["--cluster", "udp://x:1"], "expected 'local' or tcp://HOST:PORT"),
    (["--cluster", "local", "--server-cpus", "0"], "--server-cpus"),
])
def test_bad_cluster_usage_is_one_line_and_status_2(tmp_path, args, message):
    done = subprocess.run([*MUXBENCH, "bench", "--out", str(tmp_path), "--suite", "quick",
                           "--models", "epoll", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_unreachable_scheduler_is_a_clear_error(tmp_path):
    done = subprocess.run([*MUXBENCH, "bench", "--out", str(tmp_path), "--suite", "quick",
                           "--models", "epoll", "--scenarios", "echo_clients", "--cluster",
                           f"tcp://127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "cannot reach a Dask scheduler" in done.stderr, done.stderr
    assert not list(tmp_path.iterdir())  # no run was begun


def test_a_host_whose_window_missed_the_common_one_is_named():
    offset = Offset(offset_ns=5_000_000, error_ns=100_000)  # its clock 5 ms ahead
    start, end = 10**18, 10**18 + 10**9
    margin = margin_ns(1.0)
    assert margin == 50_000_000  # max(50 ms, 2 % of a 1 s window)
    on_time = {"start_ns": start + 5_000_000, "end_ns": end + 5_000_000}
    assert missed("gen1", on_time, start, end, offset, margin) is None
    late = {"start_ns": start + 105_000_000, "end_ns": end + 105_000_000}
    assert missed("gen2", late, start, end, offset, margin) == (
        "generator host gen2 missed the common window by 100.0 ms at its start (margin 50 ms)")
    assert "recorded no window" in missed("gen3", None, start, end, offset, margin)
