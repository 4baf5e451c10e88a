"""The bench harness: results files, trial verdicts, clean-up on failure and on Ctrl-C.

Misbehaving servers are small real programs (they listen, print the ready
line, fork a child, then crash, ignore SIGTERM or never get ready); the trial
must record what happened and leave no process of theirs alive.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import results as R
from bench.run.console import Display
from bench.run.launch import CommandServer, Launched, TrialSpec
from bench.run.outcome import classify
from bench.run.runner import OVERLAP_MAX_TASKS, Runner
from bench.run.scenarios import SCENARIOS, plan, scenario_models
from bench.run.suite import available_models
from bench.run.trial import others_note, run_trial
from bench.sample.cgroup import CGROUP_ROOT, PREFIX
from bench.sample.environment import damon_monitors, placement
from muxbench.procs import group_members
from servers.models import MODELS
from servers.reference import C_SERVER
from tests import fake_results
from tests.support import MUXBENCH, ROOT, kill_group, process_tree, spawn, wait_for

# ---- results.json --------------------------------------------------------------------


def _run(trials: list[dict]) -> dict:
    return {"schema_version": R.SCHEMA_VERSION, "run_id": "r", "suite": "quick",
            "status": "complete", "started_at": R.utc_now(), "environment": {},
            "scenarios": {"idle": {"x": "clients"}}, "trials": trials}


def _trial(clients: int, cpu: float | None, status: str = "ok") -> dict:
    return {"scenario": "idle", "model": "epoll", "protocol": "echo",
            "point": {"clients": clients}, "repeat": 0, "status": status,
            "derived": {"cpu_per_msg_us": cpu}}


def test_results_round_trip_group_and_summarise(tmp_path):
    data = _run([_trial(10, 3.0), _trial(10, 5.0), _trial(10, 4.0), _trial(100, None),
                 _trial(10, 99.0, status="invalid")])
    run_dir = tmp_path / "results" / "run-1"
    R.write_results_atomic(run_dir / "results.json", data)
    R.point_latest(tmp_path / "results", run_dir)
    assert [p.name for p in run_dir.iterdir()] == ["results.json"]  # no temp file left
    loaded = R.load_results(R.resolve_run(None, tmp_path / "results"))
    assert loaded == data
    assert R.resolve_run("run-1", tmp_path / "results") == run_dir.resolve()
    groups = R.group_points(loaded)
    assert sorted(groups) == [("idle", "epoll", "echo", 10), ("idle", "epoll", "echo", 100)]
    stats = R.point_summary(loaded, "derived.cpu_per_msg_us")
    assert stats["idle", "epoll", "echo", 10] == {"median": 4.0, "min": 3.0, "max": 5.0, "n": 3}
    assert stats["idle", "epoll", "echo", 100]["n"] == 0
    assert len(R.group_points(loaded, ("ok", "invalid"))["idle", "epoll", "echo", 10]) == 4


def test_results_writer_writes_what_a_whole_dump_would(tmp_path):
    """Saved after every trial, each trial encoded once: the file must still be
    exactly json.dumps(indent=1) of the run at every step, unicode and nulls included."""
    full = fake_results.healthy_run(repeats=2)
    full["environment"]["note"] = "CPU 1 — pinned\n"
    data = {**full, "status": "running", "trials": []}
    path = tmp_path / "results.json"
    writer = R.ResultsWriter(path)
    for trial in [None, *full["trials"], None]:
        if trial is not None:
            data["trials"].append(trial)
        else:
            data["finished_at"] = R.utc_now() if data["trials"] else None
            data["status"] = "complete" if data["trials"] else "running"
        writer.save(data)
        assert path.read_text() == json.dumps(data, indent=1) + "\n"
    assert len(data["trials"]) > 10 and data["status"] == "complete"
    assert R.load_results(path) == data
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("{not json", "not valid JSON"),
    (json.dumps({"schema_version": 99}), "schema_version 99"),
    (json.dumps({"schema_version": 1, "run_id": "x"}), "missing key"),
])
def test_load_results_refuses_bad_files_in_one_line(tmp_path, content, message):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(R.ResultsError, match=message) as info:
        R.load_results(tmp_path)
    assert "\n" not in str(info.value)


def test_resolve_run_without_latest_is_a_results_error(tmp_path):
    with pytest.raises(R.ResultsError, match="latest"):
        R.resolve_run(None, tmp_path)


# ---- verdicts --------------------------------------------------------------------------

OUTCOME = {"timed_out": False, "exit_status": 0, "stderr": "", "timeout_s": 30.0}


def _load(**over) -> dict:
    base = {"clients": 1100, "connected": 1100, "errors": 0, "errors_by_kind": {}, "lost": 0,
            "corrupted": 0, "duplicated": 0, "reordered": 0, "valid": True,
            "invalid_reason": None}
    return {**base, **over}


def test_verdicts():
    assert classify("echo", _load(), OUTCOME, None, "") == ("ok", None)
    status, reason = classify("idle", _load(errors=76, errors_by_kind={"EOF": 76}),
                              OUTCOME, None, "")
    assert status == "ok" and reason.startswith("ceiling: 76 of 1100")
    assert classify("echo", _load(errors=3), OUTCOME, None, "")[0] == "failed"
    assert classify("echo", _load(lost=2), OUTCOME, None, "") == ("failed", "integrity: 2 lost")
    assert classify("echo", _load(valid=False, invalid_reason="client saturated"), OUTCOME,
                    None, "") == ("invalid", "client saturated")
    status, reason = classify("echo", _load(), OUTCOME, -9, "boom")
    assert status == "failed" and "status -9" in reason and "boom" in reason
    assert classify("echo", None, {**OUTCOME, "exit_status": 1}, None, "")[0] == "failed"


# ---- trials with misbehaving servers ---------------------------------------------------

FAKE_SERVER = textwrap.dedent("""
    import os, signal, socket, sys, time
    mode = sys.argv[1]
    s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[2])))
    if mode == "silent":
        time.sleep(60)
    s.listen(128)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        time.sleep(60); os._exit(0)
    print(f"listening on 127.0.0.1:{s.getsockname()[1]}", flush=True)
    conns, end = [], time.monotonic() + (0.3 if mode == "crash" else 60)
    s.settimeout(0.05)
    while time.monotonic() < end:
        try:
            conns.append(s.accept()[0])
        except OSError:
            pass
    os._exit(3)
""")


def _spec(model: str = C_SERVER, cmd: list[str] | None = None, clients: int = 20,
          ready_timeout: float = 15.0, workers: int | None = None) -> TrialSpec:
    server = None if cmd is None else CommandServer(model, f"{shlex.join(cmd)} {{port}}")
    return TrialSpec("idle", "idle", model, "echo", {"clients": clients}, 0, duration=0.5,
                     warmup=0.1, sample_interval=0.05,
                     load_args=["--workload", "idle", "--clients", str(clients)],
                     connections=clients, server=server, ready_timeout=ready_timeout,
                     workers=workers)


def _trial_with(cmd: list[str] | None, model: str = C_SERVER, ready_timeout: float = 15.0,
                workers: int | None = None) -> tuple[dict, int]:
    where = placement()
    spec = _spec(model, cmd, ready_timeout=ready_timeout, workers=workers)
    server = Launched.start(spec, where, use_cgroup=True)
    trial = run_trial(spec, where, server)
    return trial, server.proc.pid


def _assert_all_gone(pid: int) -> None:
    assert group_members(pid) == []
    assert not list(CGROUP_ROOT.glob(f"*/{PREFIX}{os.getpid()}-{pid}"))


def test_a_real_trial_measures_and_cleans_up():
    trial, pid = _trial_with(None, model="epoll")
    assert trial["status"] == "ok", trial["reason"]
    assert trial["generator_bound"] is False
    assert trial["load"]["connected"] == 20
    server = trial["server"]
    assert server["window"] == "loadgen" and server["wall_s"] > 0
    steps = ["ready", "load_start", "warmup", "start", "end", "load_end", "stopped"]
    times = [trial["timeline"][step] for step in steps]
    assert times == sorted(times), trial["timeline"]
    assert server["fds_peak"] >= 20 and server["samples"] >= 2
    assert trial["cleanup"] == {"graceful": True, "exit_status": 0, "leftover_procs": 0,
                                "killed": 0, "remaining_after_kill": 0, "leftover_fds": 0}
    _assert_all_gone(pid)


def test_a_multi_worker_model_runs_and_records_the_workers_it_is_given():
    trial, pid = _trial_with(None, model="prefork", workers=3)
    assert trial["status"] == "ok", trial["reason"]
    assert trial["workers"] == 3
    assert trial["server"]["procs_peak"] == 4  # the parent and its three workers
    _assert_all_gone(pid)


@pytest.mark.parametrize("model, clients, ahead", [
    ("fork", 20, True), ("fork", OVERLAP_MAX_TASKS + 30, False),
    ("thread", OVERLAP_MAX_TASKS + 30, False)])
def test_the_next_trial_begins_ahead_unless_the_server_is_a_big_tree(model, clients, ahead):
    """Trial k+1 starts while trial k stops -- but not beside the stop of
    hundreds of tasks, whose exit disturbed the next trial."""
    specs = [_spec(model, clients=clients), _spec("epoll")]
    runner = Runner(specs, placement(), use_cgroup=True)
    try:
        first = runner.run(0, Display(2, tty=False))
        assert first["status"] == "ok", first["reason"]
        assert first["load"]["connected"] == clients
        assert (1 in runner.live) is ahead
        second = runner.run(1, Display(2, tty=False))
        assert second["status"] == "ok", second["reason"]
    finally:
        runner.close()
    assert not runner.live


def test_other_work_on_the_generators_cpus_is_measured():
    """A CPU hog beside the load generator shows in the window's `other_s`,
    apart from the generator's and the orchestrator's time."""
    where = placement()
    if not where.pinned:
        pytest.skip("needs a CPU for the server and one for the load generator")
    own = os.sched_getaffinity(0)
    windows = []
    try:
        os.sched_setaffinity(0, where.client_cpus)  # where the suite runs the orchestrator
        for hog in (False, True):
            hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"],
                                     start_new_session=True) for _ in where.client_cpus if hog]
            try:
                spec = _spec("epoll")
                trial = run_trial(spec, where, Launched.start(spec, where, use_cgroup=True))
            finally:
                for proc in hogs:
                    kill_group(proc)
            assert trial["status"] == "ok", trial["reason"]
            windows.append((trial["client"]["window"], trial["server"]["wall_s"]))
    finally:
        os.sched_setaffinity(0, own)
    capacity = [wall * len(where.client_cpus) for _, wall in windows]
    for (window, _), most in zip(windows, capacity, strict=True):
        assert window["cpus"] == where.client_cpus
        assert window["generator_s"] > 0 and window["orchestrator_s"] > 0
        assert window["steal_s"] >= 0
        # Idle time is read in 10 ms clock ticks: two readings, two ticks.
        assert -0.02 <= window["busy_s"] <= most + 0.02, window
        parts = window["generator_s"] + window["orchestrator_s"] + window["other_s"]
        assert parts == pytest.approx(window["busy_s"])
    # Beside a hog of its own the generator's CPUs are full, and most of that is other
    # work -- whether or not some neighbour was busy there already in the quiet trial.
    _, (hogged, _) = windows
    assert hogged["busy_s"] >= 0.9 * capacity[1], windows
    assert hogged["other_s"] >= 0.5 * capacity[1], windows


def test_an_invalid_trial_names_the_other_work_beside_its_generator():
    window = {"other_s": 0.2, "orchestrator_s": 0.02, "steal_s": 0.01}
    assert others_note(window, wall_s=0.5, cpus=1) == (
        "other work took 0.20 s of the generator's CPU in its 0.50 s window")
    assert others_note(window, wall_s=0.5, cpus=4) is None  # 10 % of 4 CPUs is more
    assert others_note({"other_s": 0.06, "orchestrator_s": 0.3, "steal_s": 0.08}, wall_s=0.5,
                       cpus=1) == (
        "other work took 0.06 s and the orchestrator took 0.30 s and the hypervisor took "
        "0.08 s of the generator's CPU in its 0.50 s window")
    assert others_note(None, wall_s=0.5, cpus=1) is None


def test_server_crash_is_a_failed_trial_and_its_orphan_is_killed():
    trial, pid = _trial_with([sys.executable, "-c", FAKE_SERVER, "crash"])
    assert trial["status"] == "failed" and trial["generator_bound"] is False
    assert "server exited with status 3" in trial["reason"]
    assert trial["cleanup"]["leftover_procs"] == 1  # the forked child outlived it
    assert trial["cleanup"]["remaining_after_kill"] == 0
    _assert_all_gone(pid)


def test_server_ignoring_sigterm_is_killed_and_recorded():
    trial, pid = _trial_with([sys.executable, "-c", FAKE_SERVER, "stubborn"])
    assert trial["cleanup"]["graceful"] is False
    assert trial["cleanup"]["leftover_procs"] >= 2  # itself and its child
    assert "ignored SIGTERM" in trial["reason"]
    _assert_all_gone(pid)


def test_server_that_never_gets_ready():
    trial, pid = _trial_with([sys.executable, "-c", FAKE_SERVER, "silent"], ready_timeout=1.0)
    assert trial["status"] == "failed" and trial["reason"].startswith("server did not start")
    assert trial["load"] is None
    _assert_all_gone(pid)


# ---- Ctrl-C ----------------------------------------------------------------------------


def test_ctrl_c_keeps_completed_trials_and_leaves_nothing(tmp_path):
    proc = spawn([*MUXBENCH, "bench", "--suite", "quick", "--models", "epoll,select",
                  "--scenarios", "echo_clients,idle", "--out", str(tmp_path)],
                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    try:
        latest = tmp_path / "latest" / "results.json"

        def trials_done() -> int:
            try:
                return len(json.loads(latest.read_text())["trials"])
            except (OSError, ValueError):
                return 0

        assert wait_for(lambda: trials_done() >= 1, timeout=60), "no trial completed"

        def load_running() -> bool:
            tree = process_tree(proc.pid)
            seen.update(tree)
            return any(b"load" in _cmdline(p) for p in tree)

        assert wait_for(load_running, timeout=30), "no load generator seen"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    data = R.load_results(tmp_path / "latest")
    assert data["status"] == "interrupted" and data["finished_at"]
    assert len(data["trials"]) >= 1
    assert all(t["status"] in ("ok", "failed", "invalid") for t in data["trials"])
    assert [p for p in seen if Path(f"/proc/{p}").exists() and _state(p) != "Z"] == []
    assert not list(CGROUP_ROOT.glob(f"*/{PREFIX}{proc.pid}-*"))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


# ---- the quick suite (shared run; the acceptance criteria of `make bench-quick`) --------


# The models of the design, written out here rather than taken from the code under
# test: a model the suite stopped running must fail this, not shrink it.
DESIGN_MODELS = ("polling", "select", "poll", "epoll", "epoll-et", "sigio", "thread", "fork",
                 "threadpool", "prefork", "reuseport", "uring", "asyncio", "uvloop")
# Models that need more than the standard library, each with what it needs.
OPTIONAL = {"uvloop": "uvloop", "uring": "liburing"}


def io_uring_disabled() -> bool:
    path = Path("/proc/sys/kernel/io_uring_disabled")
    return path.exists() and path.read_text().strip() == "2"


def expected_models() -> set[str]:
    """The design's models, less an optional one only where it visibly cannot run here."""
    missing = {name for name, module in OPTIONAL.items()
               if importlib.util.find_spec(module) is None}
    if io_uring_disabled():
        missing.add("uring")
    return set(DESIGN_MODELS) - missing


@pytest.mark.timeout(900)  # the shared quick run is set up inside the first test using it
def test_quick_suite_covers_every_model_and_explains_every_failure(quick_run):
    data = R.load_results(quick_run)
    assert data["status"] == "complete"
    measured = {t["model"] for t in data["trials"] if t["status"] == "ok"}
    assert expected_models() <= measured, f"no ok trial of {expected_models() - measured}"
    available, _, servers = available_models([])
    # The scenarios a suite runs unnamed (C100K's run in full, or when named).
    quick = {name: s for name, s in SCENARIOS.items() if "quick" in s.runs_in}
    assert set(data["scenarios"]) == set(quick)
    planned = plan("quick", list(quick.values()), available, 1, servers)
    assert len(data["trials"]) == len(planned)
    for name, scenario in quick.items():
        models = scenario_models(scenario, "quick", available, servers)
        ran = {t["model"] for t in data["trials"] if t["scenario"] == name}
        assert ran == set(models), name
        assert data["scenarios"][name]["models"] == models
    for trial in data["trials"]:
        if trial["status"] != "ok":
            assert trial["reason"], trial
        assert trial["cleanup"]["leftover_procs"] == 0, trial
        assert trial["cleanup"]["remaining_after_kill"] == 0, trial
        assert trial["cleanup"]["leftover_fds"] == 0, trial
    counted = [t for t in data["trials"] if t["scenario"] == "syscalls" and t["status"] == "ok"]
    assert counted
    for trial in counted:  # counted inside the window, for every kind of tree
        if shutil.which("perf"):
            assert trial["server"]["syscalls"] > 0, trial
        else:
            assert trial["server"]["syscalls"] is None
            assert "perf is not installed" in trial["reason"]
    placement_note = data["environment"]["placement"]
    for trial in data["trials"]:  # one worker per server CPU, for those that take workers
        sized = trial["model"] in MODELS and MODELS[trial["model"]].takes_workers
        assert trial["workers"] == (len(placement_note["server_cpus"]) if sized else None)
    assert placement_note["pinned"] == (len(os.sched_getaffinity(0)) > 1)
    assert data["environment"]["ctx_switch_accounting"].split(":")[0] in ("taskstats", "/proc")
    assert data["environment"]["damon_monitors"] == damon_monitors()
    if placement_note["pinned"]:  # the suite pins the orchestrator beside the generator
        windows = [t["client"]["window"] for t in data["trials"] if t["status"] == "ok"]
        assert windows and all(w is not None and w["busy_s"] >= -0.02 for w in windows)


# ---- command line ----------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--models", "nosuch"], "unknown model or scenario: nosuch"),
    (["--scenarios", "idle,bogus"], "unknown model or scenario: bogus"),
    (["--repeats", "0"], "must be a positive integer"),
    (["--suite", "huge"], "invalid choice"),
    (["--server-cpus", "1-0"], "not a list of CPU numbers"),
    (["--server-cpus", "4095"], "server CPUs 4095 are not all usable here"),
])
def test_bad_usage_is_one_line_and_status_2(tmp_path, args, message):
    result = subprocess.run([*MUXBENCH, "bench", "--out", str(tmp_path), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_dry_run_lists_the_plan_without_running(tmp_path):
    result = subprocess.run([*MUXBENCH, "bench", "--suite", "quick", "--scenarios", "idle",
                             "--models", "epoll,select", "--dry-run", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Catalogue order at the first point, rotated at the next: no model always goes first.
    assert result.stdout.splitlines() == [
        "idle select clients=100 #0", "idle epoll clients=100 #0",
        "idle epoll clients=1100 #0", "idle select clients=1100 #0", "4 trials"]
    assert not any(tmp_path.iterdir())
