"""The invariants hold on a real quick run, and each one fails when its rule is broken."""

from __future__ import annotations

import contextlib
import copy
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from bench.gate import invariants
from bench.results import load_results
from bench.sample.sampler import TreeSampler
from tests import fake_results as fake
from tests.support import ROOT, kill_group, read_line, serve


@pytest.fixture
def healthy() -> dict:
    return fake.healthy_run()


def _edit(results: dict, scenario: str, model: str, edit, x: object = None) -> dict:
    """A copy in which edit(trial) was applied to every trial of one model's point."""
    out = copy.deepcopy(results)
    key = out["scenarios"][scenario]["x"]
    for t in out["trials"]:
        if t["scenario"] == scenario and t["model"] == model and x in (None, t["point"][key]):
            edit(t)
    return out


def _drop(results: dict, scenario: str, model: str) -> dict:
    out = copy.deepcopy(results)
    out["trials"] = [t for t in out["trials"]
                     if not (t["scenario"] == scenario and t["model"] == model)]
    return out


def _set(path: str, value: object):
    def edit(trial: dict) -> None:
        obj, leaf = fake.holder(trial, path)
        obj[leaf] = value
    return edit


def test_healthy_synthetic_run_passes_every_invariant(healthy):
    assert invariants.check_all(healthy) == {name: [] for name in invariants.INVARIANTS}


# -- each invariant, broken on purpose ---------------------------------------------------

@pytest.mark.parametrize("counter", invariants.INTEGRITY_COUNTERS)
def test_integrity_catches_each_kind_of_message_fault(healthy, counter):
    broken = copy.deepcopy(healthy)
    broken["trials"][7]["load"][counter] = 3
    found = invariants.check_integrity(broken)
    assert len(found) == 1 and f"3 {counter}" in found[0]


@pytest.mark.parametrize("edit, words", [
    (_set("cleanup.leftover_procs", 2), "leftover_procs"),
    (_set("cleanup.leftover_fds", 1), "leftover_fds"),
    (_set("cleanup.left_after_sigterm", 1), "left_after_sigterm"),
    (_set("cleanup.graceful", False), "graceful"),
    (lambda t: t["cleanup"].pop("leftover_fds"), "not clean"),
    (lambda t: t.pop("cleanup"), "no cleanup check"),
])
def test_cleanup_catches_leftovers_and_a_missing_record(healthy, edit, words):
    broken = _edit(healthy, "echo_clients", "thread", edit)
    found = invariants.check_cleanup(broken)
    assert found and all(words in line and "thread" in line for line in found)


@pytest.mark.parametrize("broken_by, words", [
    # polling that sleeps 1 ms between sweeps is no longer the seed's busy loop
    (lambda r: _edit(r, "idle", "polling", _set("server.ctx_voluntary", 2000)), "never sleeps"),
    (lambda r: _edit(r, "idle", "polling", _set("server.ctx_voluntary", None)), "not recorded"),
    # an epoll server that spins with nobody talking
    (lambda r: _edit(r, "idle", "epoll", _set("server.cpu_util", 0.9)), "20x epoll"),
    (lambda r: _drop(r, "idle", "polling"), "no client count"),
])
def test_polling_idle_cpu_catches(healthy, broken_by, words):
    found = invariants.check_polling_idle_cpu(broken_by(healthy))
    assert found and any(words in line for line in found)


def test_polling_sharing_its_cpu_with_a_busy_neighbour_still_holds(healthy):
    """A spinning sweep beside another CPU-bound task gets half the core or less:
    it still never sleeps, and still costs far more than epoll."""
    shared = fake.set_values(healthy, "idle", "polling", "server.cpu_util",
                             [0.3, 0.45, 0.3, 0.25, 0.3])
    assert invariants.check_polling_idle_cpu(shared) == []


@pytest.mark.parametrize("model, edit, words", [
    # a select server that somehow watched all 1100 (no ceiling) breaks the claim
    ("select", lambda t: (t["load"].update(errors=0, errors_by_kind={}),
                          t["server"].update(fds_peak=1105)), "refused fds >= 1024"),
    ("poll", _set("load.connected", 1020), "served all 1100"),
    ("epoll", _set("server.fds_peak", 1021), "served all 1100"),
    ("epoll", _set("status", "failed"), "served all 1100"),
])
def test_fd_ceiling_catches(healthy, model, edit, words):
    found = invariants.check_fd_ceiling(_edit(healthy, "idle", model, edit, x=1100))
    assert found and all(model in line and words in line for line in found)


@pytest.mark.parametrize("status, reason", [
    ("failed", "server exited with status -9 during the trial"),
    ("failed", "load generator exited with status 1 and no results: boom"),
    ("ok", None),
])
def test_fd_ceiling_counts_only_a_trial_turned_away_at_the_ceiling(healthy, status, reason):
    """A select trial that failed for another reason holds fewer fds too: not the ceiling."""
    broken = _edit(healthy, "idle", "select", lambda t: t.update(status=status, reason=reason),
                   x=1100)
    found = invariants.check_fd_ceiling(broken)
    assert len(found) == 5 and all("select" in line and "refused fds >= 1024" in line
                                   and f"status {status} ({reason or 'no reason'})" in line
                                   for line in found), found


def test_fd_ceiling_needs_the_1100_client_point(healthy):
    found = invariants.check_fd_ceiling(_drop(healthy, "idle", "poll"))
    assert found == ["idle clients=1100: no poll trial"]


@pytest.mark.parametrize("model, idle, value, words", [
    ("select", 1000, 9.5, "expected growth"),  # select no longer scans every fd
    ("poll", 1000, 10.0, "expected growth"),
    ("epoll", 1000, 25.0, "expected within"),  # epoll cost now grows with idle fds
])
def test_sparse_scaling_catches(healthy, model, idle, value, words):
    broken = _edit(healthy, "sparse", model, _set("derived.cpu_per_msg_us", value), x=idle)
    found = invariants.check_sparse_scaling(broken)
    assert len(found) == 1 and model in found[0] and words in found[0]


def test_sparse_scaling_needs_both_points(healthy):
    broken = copy.deepcopy(healthy)
    broken["trials"] = [t for t in broken["trials"]
                        if not (t["scenario"] == "sparse" and t["point"]["idle"] == 1000)]
    assert len(invariants.check_sparse_scaling(broken)) == 3


def test_sparse_scaling_reads_a_trial_whose_generator_saturated(healthy):
    saturated = _edit(healthy, "sparse", "select", _set("status", "invalid"), x=10)
    assert invariants.check_sparse_scaling(saturated) == []
    failed = _edit(healthy, "sparse", "select", _set("status", "failed"), x=10)
    assert invariants.check_sparse_scaling(failed) == [
        "sparse: no select CPU/msg at both 10 and 1000 idle fds"]


@pytest.mark.parametrize("model, value", [("thread", 2_000.0), ("fork", 20_000.0),
                                          ("epoll", 50_000.0)])
def test_memory_order_catches(healthy, model, value):
    broken = _edit(healthy, "idle", model, _set("derived.pss_per_conn_bytes", value))
    found = invariants.check_memory_order(broken)
    assert len(found) == 1 and "fork > thread > epoll" in found[0]


def test_cli_exit_status(tmp_path, healthy, capsys):
    good = fake.write(healthy, tmp_path / "good")
    bad = fake.write(_edit(healthy, "idle", "epoll", _set("server.cpu_util", 0.9)),
                     tmp_path / "bad")
    assert invariants.main([str(good)]) == 0
    assert invariants.main([str(bad)]) == 1
    assert "FAIL polling_idle_cpu" in capsys.readouterr().out
    renamed = tmp_path / "good" / "broken.json"  # beside a good results.json, read as named
    (tmp_path / "bad" / "results.json").rename(renamed)
    assert invariants.main([str(renamed)]) == 1
    assert "FAIL polling_idle_cpu" in capsys.readouterr().out
    assert invariants.main([str(tmp_path / "missing")]) == 2
    assert "muxbench check:" in capsys.readouterr().err


# -- a real spinning server, measured like any model, is caught ------------------------

# An epoll loop with the classic bug: a zero timeout turns every wait into a spin,
# so it burns a core while its clients say nothing -- busy polling in disguise.
SPINNER = textwrap.dedent("""
    import select, socket
    listener = socket.create_server(("127.0.0.1", 0), backlog=512)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    print("listening on 127.0.0.1:%d" % listener.getsockname()[1], flush=True)
    held = []
    while True:
        for fd, _ in ep.poll(0):
            try:
                held.append(listener.accept()[0])
            except BlockingIOError:
                pass
""")
IDLE_CLIENTS = 50


@contextlib.contextmanager
def spinning_server():
    proc = subprocess.Popen([sys.executable, "-c", SPINNER], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        port = int(read_line(proc, 10.0).rsplit(":", 1)[1])
        yield proc.pid, ("127.0.0.1", port)
    finally:
        kill_group(proc)
        proc.stdout.close()


def idle_trial(model: str, pid: int, address: tuple[str, int], window: float = 0.6) -> dict:
    """An idle trial of the server at pid: IDLE_CLIENTS silent clients, CPU over a window."""
    with contextlib.ExitStack() as clients:
        for _ in range(IDLE_CLIENTS):
            clients.enter_context(socket.create_connection(address, timeout=5))
        time.sleep(0.2)  # let the accepts finish before the window opens
        sampler = TreeSampler(pid)
        sampler.mark("start")
        time.sleep(window)
        sampler.mark("end")
        trial = fake.trial("idle", model, {"clients": IDLE_CLIENTS}, 0)
        trial["server"] = sampler.stats()
        return trial


def test_idle_cpu_invariant_catches_a_real_spinning_server():
    with serve("polling") as polling:
        busy = idle_trial("polling", polling.proc.pid, polling.address)
    with serve("epoll") as epoll:
        quiet = idle_trial("epoll", epoll.proc.pid, epoll.address)
    with spinning_server() as (pid, address):
        spinner = idle_trial("epoll", pid, address)
    honest = invariants.check_polling_idle_cpu(fake.run([busy, quiet]))
    caught = invariants.check_polling_idle_cpu(fake.run([busy, spinner]))
    cpu = {name: t["server"]["cpu_util"] for name, t in
           (("polling", busy), ("epoll", quiet), ("spinner", spinner))}
    assert honest == [], (honest, cpu)  # the real sweep never slept, and cost 20x epoll
    assert any("20x epoll" in line for line in caught), (caught, cpu)


# -- the real quick run ----------------------------------------------------------------

def assert_no_violation(results: dict) -> None:
    violations = {k: v for k, v in invariants.check_all(results).items() if v}
    assert not violations, "\n".join(f"{k}: {line}" for k, v in violations.items()
                                     for line in v)


def test_quick_run_satisfies_every_invariant(quick_run):
    assert_no_violation(load_results(quick_run))


def test_the_committed_baseline_satisfies_every_invariant():
    # Five repeats of the quick suite, kept as a sample for the docs; `make regress`
    # measures its base anew and reads this only when given `--baseline`.
    assert_no_violation(load_results(ROOT / "results" / "baseline"))
