"""Chaos in the harness: processes killed mid-trial, signals, a results directory that
goes away, corrupt results handed to report and compare.

Each fault must end in a clear message (one line, no traceback), completed
trials kept in valid JSON, and no process left.  (Ctrl-C is covered by
test_harness.py; corrupt-file basics -- missing, not JSON, other schema -- by
test_report.py and test_compare.py.  These add what they do not cover.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from bench.gate.judge import ExitStatus
from bench.results import load_results, write_results_atomic
from bench.sample.cgroup import CGROUP_ROOT, PREFIX
from muxbench.cli import main
from tests import fake_results as fake
from tests.support import MUXBENCH, ROOT, process_tree, spawn, wait_for

RUN_TIMEOUT = 180.0  # a bound for every harness run below; the machine is shared


def start_bench(out: Path, models: str, scale: str) -> subprocess.Popen:
    return spawn([*MUXBENCH, "bench", "--suite", "quick", "--scenarios", "idle",
                  "--models", models, "--duration-scale", scale, "--out", str(out)],
                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, seen: set[int]) -> tuple[int, str]:
    """Wait for the bench to end, escalating past the bound: SIGINT first (the bench then
    kills its servers and generators, which live in sessions of their own), then SIGKILL."""
    err = ""
    for sig, timeout in ((None, RUN_TIMEOUT), (signal.SIGINT, 20.0), (signal.SIGKILL, None)):
        if sig is not None:
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            err = proc.communicate(timeout=timeout)[1]
            break
    seen.update(process_tree(proc.pid))
    return proc.returncode, err


def argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def alive(pids: set[int]) -> list[int]:
    """Those of pids still running (not zombies) -- with a moment to finish dying."""
    def left() -> list[int]:
        out = []
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    out.append(pid)
        return out
    wait_for(lambda: not left(), 5)
    return left()


def trial_processes(bench: subprocess.Popen, model: str, seen: set[int]) -> tuple[int, int]:
    """(server pid, load generator pid) of the trial of `model` once its load is running."""
    found: tuple[int, int] | None = None

    def look() -> bool:
        nonlocal found
        tree = process_tree(bench.pid)
        seen.update(tree)
        direct = {pid: argv(pid) for pid in tree if _ppid(pid) == bench.pid}
        for pid, args in direct.items():
            if "serve" in args and model in args:
                port = _listen_port(pid)
                for load, largs in direct.items():
                    if port and "load" in largs and str(port) in largs:
                        found = pid, load
                        return True
        return bench.poll() is not None

    assert wait_for(look, RUN_TIMEOUT, 0.02) and found, f"no {model} trial with its load seen"
    return found


def _ppid(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.NoSuchProcess:
        return None


def _listen_port(pid: int) -> int | None:
    with contextlib.suppress(psutil.Error):
        for conn in psutil.Process(pid).net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN:
                return conn.laddr.port
    return None


# ---- one run, three faults ---------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory) -> dict:
    """A bench run whose 1st trial's server is SIGKILLed, whose 2nd trial's load generator
    is SIGKILLed, and which gets SIGTERM during its 3rd trial."""
    out = tmp_path_factory.mktemp("faulty")
    seen: set[int] = set()
    proc = start_bench(out, "select,poll,epoll", "5")
    try:
        server, _ = trial_processes(proc, "select", seen)
        os.kill(server, signal.SIGKILL)
        _, load = trial_processes(proc, "poll", seen)
        seen.update(process_tree(load))  # its workers must go too
        os.kill(load, signal.SIGKILL)
        trial_processes(proc, "epoll", seen)
        proc.send_signal(signal.SIGTERM)
    finally:
        status, err = finish(proc, seen)
    return {"status": status, "stderr": err, "results": load_results(out / "latest"),
            "seen": seen, "pid": proc.pid}


def by_model(run: dict, model: str) -> dict:
    return next(t for t in run["results"]["trials"] if t["model"] == model)


def test_server_killed_mid_trial_is_a_failed_trial_with_its_reason(faulty_run):
    trial = by_model(faulty_run, "select")
    assert trial["status"] == "failed"
    assert "server exited with status -9" in trial["reason"], trial["reason"]


def test_load_generator_killed_mid_trial_is_a_failed_trial_with_its_reason(faulty_run):
    trial = by_model(faulty_run, "poll")
    assert trial["status"] == "failed"
    assert "load generator exited with status -9" in trial["reason"], trial["reason"]
    assert trial["cleanup"]["remaining_after_kill"] == 0


def test_sigterm_keeps_completed_trials_says_so_and_leaves_nothing(faulty_run):
    assert faulty_run["status"] == 130, faulty_run["stderr"]
    results = faulty_run["results"]
    assert results["status"] == "interrupted" and results["finished_at"]
    assert [t["model"] for t in results["trials"]][:2] == ["select", "poll"]
    err = faulty_run["stderr"]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("muxbench bench: interrupted: ")
    assert alive(faulty_run["seen"]) == []
    assert not list(CGROUP_ROOT.glob(f"*/{PREFIX}{faulty_run['pid']}-*"))


# ---- the results directory ----------------------------------------------------------------


def test_unwritable_results_directory_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("a file where the results directory should be")
    proc = subprocess.run([*MUXBENCH, "bench", "--suite", "quick", "--scenarios", "idle",
                           "--models", "epoll", "--out", str(tmp_path / "file" / "results")],
                          cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("muxbench bench: cannot create a run directory under ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.fixture(scope="module")
def lost_directory_run(tmp_path_factory) -> dict:
    """A bench run whose run directory is replaced by a file after its first trial."""
    out = tmp_path_factory.mktemp("lost")
    seen: set[int] = set()
    proc = start_bench(out, "epoll,select", "1")
    moved = None
    try:
        def first_trial_written() -> bool:
            seen.update(process_tree(proc.pid))
            with contextlib.suppress(OSError, ValueError):
                return len(json.loads((out / "latest" / "results.json").read_text())["trials"]) > 0
            return proc.poll() is not None
        assert wait_for(first_trial_written, RUN_TIMEOUT, 0.02), "no trial completed"
        run_dir = (out / "latest").resolve()
        moved = run_dir.rename(run_dir.with_name(run_dir.name + ".moved"))
        run_dir.write_text("not a directory any more")
    finally:
        status, err = finish(proc, seen)
    return {"status": status, "stderr": err, "moved": moved, "seen": seen}


def test_results_directory_lost_mid_run_keeps_trials_and_leaves_nothing(lost_directory_run):
    kept = load_results(lost_directory_run["moved"])
    assert len(kept["trials"]) >= 1
    assert alive(lost_directory_run["seen"]) == []


def test_results_directory_lost_mid_run_is_one_clear_line(lost_directory_run):
    err = lost_directory_run["stderr"]
    assert "Traceback" not in err, err[-2000:]
    assert lost_directory_run["status"] == 2
    assert err.strip().splitlines()[-1].startswith("muxbench bench: cannot write ")


# ---- corrupt results handed to report and compare -------------------------------------------

COMMANDS = ("report", "compare")


def run_command(name: str, bad: Path, good: Path) -> tuple[int, str]:
    """`muxbench NAME` in-process on a bad run (compare: against a good one); an
    exception escaping main() -- a traceback for the user -- fails the test."""
    args = (["compare", str(good), str(bad)] if name == "compare"
            else ["report", str(bad), "--plots", str(bad / "plots"), "-q"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(args)
    return status, err.getvalue()


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("seed", range(4))
def test_truncated_results_file_is_one_line_exit_2(tmp_path, name, seed):
    """A results.json cut short anywhere (as a writer without rename would leave it)."""
    good = tmp_path / "good"
    write_results_atomic(good / "results.json", fake.healthy_run(repeats=2))
    text = (good / "results.json").read_text()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text(text[:random.Random(seed).randrange(1, len(text) - 2)])
    status, err = run_command(name, bad, good)
    assert status == 2
    assert err.startswith(f"muxbench {name}: ") and "not valid JSON" in err
    assert len(err.strip().splitlines()) == 1


def _trial0(key: str, value):
    return lambda d: d["trials"][0].__setitem__(key, value)


def _point0(value):
    return lambda d: d["trials"][0]["point"].__setitem__("clients", value)


# What the reader must say of each wrong-typed field: a value of the wrong type is
# damage, never "not recorded", so each is refused naming the field.
CORRUPTIONS = {
    "trial model is null": (_trial0("model", None), "trial 0: 'model' must be str"),
    "trial protocol is an object": (_trial0("protocol", {}), "trial 0: 'protocol' must be str"),
    "trial scenario is a list": (_trial0("scenario", []), "trial 0: 'scenario' must be str"),
    "trial point is a number": (_trial0("point", 1e308), "trial 0: 'point' must be dict"),
    "scenario entry is a string": (lambda d: d["scenarios"].__setitem__("idle", "x"),
                                   "scenario 'idle' must be an object"),
    "server cpu_util is Infinity": (lambda d: d["trials"][0]["server"].__setitem__(
        "cpu_util", float("inf")), "not valid JSON: Infinity is not a number"),
    "trials is an object": (lambda d: d.__setitem__("trials", {}), "'trials' must be a list"),
    "environment is a list": (lambda d: d.__setitem__("environment", []),
                              "'environment' must be an object"),
    "trial load is a list": (_trial0("load", []), "trial 0: 'load' must be dict or null"),
    "trial client is a list": (_trial0("client", []), "trial 0: 'client' must be dict or null"),
    "client window is a string": (_trial0("client", {"window": "x"}),
                                  "trial 0, client: 'window' must be dict or null"),
    "client window figures are not numbers": (_trial0(
        "client", {"window": {"other_s": "x", "steal_s": []}}),
        "trial 0, client.window: 'other_s' must be int or float or null"),
    # Unhashable, these escaped as a TypeError when the points were grouped.
    "trial point value is a list": (_point0([100]), "trial 0, point: 'clients' must be int "
                                    "or float"),
    "scenario x is an object": (lambda d: d["scenarios"]["idle"].__setitem__("x", {}),
                                "scenario 'idle': 'x' must be str"),
    # A point parameter is a number; as an x value a string broke the plots.
    "trial point value is a string": (_point0("100"), "trial 0, point: 'clients' must be"),
    # The plots read each point at its scenario's x; without it the report crashed.
    "trial point lacks its scenario's x": (lambda d: d["trials"][0]["point"].pop("clients"),
                                           "trial 0, point: no 'clients', the x of 'idle'"),
    "scenario x names no point parameter": (
        lambda d: d["scenarios"]["idle"].__setitem__("x", "nope"),
        "point: no 'nope', the x of 'idle'"),
}


@pytest.mark.parametrize("what", CORRUPTIONS)
@pytest.mark.parametrize("name", COMMANDS)
def test_type_corrupted_results_are_refused_in_one_line(tmp_path, name, what):
    """A well-formed file with a wrong-typed field: exit 2 and one line naming the field."""
    base = fake.healthy_run(repeats=2)
    good = fake.write(base, tmp_path / "good")
    bad = json.loads(json.dumps(base))
    corrupt, says = CORRUPTIONS[what]
    corrupt(bad)
    fake.write(bad, tmp_path / "bad")
    status, err = run_command(name, tmp_path / "bad", good)
    assert (status, len(err.strip().splitlines())) == (2, 1), err
    assert err.startswith(f"muxbench {name}: ") and says in err, err


@pytest.mark.parametrize("name", COMMANDS)
def test_fields_this_version_does_not_know_are_read_past(tmp_path, name):
    """A newer writer's extra keys, in the run and in a trial, change nothing read."""
    base = fake.healthy_run(repeats=2)
    good = fake.write(base, tmp_path / "good")
    extended = json.loads(json.dumps(base))
    extended["provenance"] = {"ci": "x"}
    for trial in extended["trials"]:
        trial["annotations"] = ["x"]
    fake.write(extended, tmp_path / "bad")
    assert run_command(name, tmp_path / "bad", good) == (0, "")
    if name == "report":
        assert (tmp_path / "bad" / "REPORT.md").read_text() == _report_of(good)


def _report_of(run_dir: Path) -> str:
    assert run_command("report", run_dir, run_dir) == (0, "")
    return (run_dir / "REPORT.md").read_text()


def _paths(obj, prefix: tuple = ()):
    """Every path (tuple of keys and indexes) into a JSON value."""
    yield prefix
    if isinstance(obj, (dict, list)):
        for key, value in obj.items() if isinstance(obj, dict) else enumerate(obj):
            yield from _paths(value, (*prefix, key))


# What compare may answer for a damaged NEW: a verdict on what it could still read
# (too few repeats included), or the file refused.
VERDICTS = {ExitStatus.OK, ExitStatus.REGRESSION, ExitStatus.UNTESTED}


@pytest.mark.slow
def test_randomly_corrupted_results_never_crash_compare(tmp_path):
    """200 seeded corruptions: any value replaced by a wrong type, or a key deleted.
    Each ends in a verdict, or in exit 2 with one line (the refusal, never a traceback)."""
    base = fake.healthy_run(repeats=2)
    good = fake.write(base, tmp_path / "good")
    weird = [None, "x", -1, 0, 1e308, [], {}, True, float("nan"), float("inf")]
    crashes = []
    for seed in range(200):
        rng, bad = random.Random(seed), json.loads(json.dumps(base))
        *where, last = rng.choice([p for p in _paths(bad) if p])
        holder = bad
        for key in where:
            holder = holder[key]
        if isinstance(holder, dict) and rng.random() < 0.2:
            del holder[last]
        else:
            holder[last] = rng.choice(weird)
        fake.write(bad, tmp_path / f"bad{seed}")
        try:
            status, err = run_command("compare", tmp_path / f"bad{seed}", good)
        except Exception as exc:
            crashes.append(f"seed {seed} {(*where, last)}: {type(exc).__name__}: {exc}")
            continue
        if status != ExitStatus.BAD_INPUT:
            assert status in VERDICTS, f"seed {seed}: exit {status}"
            continue
        assert err.startswith("muxbench compare: ") and len(err.strip().splitlines()) == 1, err
    assert crashes == []
