"""`muxbench regress`: both sides measured here, interleaved; only stable metrics gate.

The bench runs are faked (regress takes its runner as an argument) so these
take seconds; the git worktrees and the one real process start are real.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from bench.gate import regress
from bench.results import ResultsError, load_results, resolve_run
from muxbench.cli import main
from tests import fake_results as fake
from tests.support import (
    ROOT,
    SIGINT_IGNORED,
    SLEEPING_BENCH,
    kill_group,
    spawn,
    stand_in_checkout,
    wait_for,
)

CPU = "derived.cpu_per_msg_us"
P99 = "derived.p99_us"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                           text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository of its own with two commits."""
    path = tmp_path / "repo"
    path.mkdir()
    _git(path, "init", "--quiet")
    for n in (1, 2):
        (path / "file.txt").write_text(f"version {n}\n")
        _git(path, "add", "file.txt")
        _git(path, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit",
             "--quiet", "-m", f"version {n}")
    return path


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch) -> Path:
    """tempfile's directory, private to the test, to see what is left in it."""
    path = tmp_path / "tmp"
    path.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    return path


def _worktrees(repo: Path) -> list[str]:
    return [line for line in _git(repo, "worktree", "list", "--porcelain").splitlines()
            if line.startswith("worktree ")]


class FakeRunner:
    """Stands in for `muxbench bench`: writes a one-repeat run, as that tree's commit."""

    def __init__(self, runs: dict[Path, list[dict]] | None = None,
                 fail_at: int | None = None) -> None:
        self.runs = runs or {}
        self.calls: list[Path] = []
        self.argvs: list[list[str]] = []
        self.fail_at = fail_at

    def __call__(self, tree: Path, out: Path, argv: list[str]) -> Path:
        self.calls.append(tree)
        self.argvs.append(argv)
        assert tree.is_dir() and "--scenarios" in argv
        if len(self.calls) == self.fail_at:
            raise ResultsError("`muxbench bench` wrote no new run")
        queued = self.runs.get(tree)
        results = queued.pop(0) if queued else fake.healthy_run(repeats=1,
                                                                seed=len(self.calls))
        results["environment"]["git_commit"] = _git(tree, "rev-parse", "HEAD")
        return fake.write(results, out / f"run{len(self.calls)}")


def _args(tmp_path: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    regress.configure(parser)
    return parser.parse_args(["--out", str(tmp_path / "out"), "--json", *argv])


# -- merging each side's runs ----------------------------------------------------------

def test_merge_makes_run_i_repeat_i():
    runs = [fake.healthy_run(repeats=1, seed=s) for s in (1, 2, 3)]
    merged = regress.merge(runs, "x-head")
    assert merged["run_id"] == "x-head" and merged["status"] == "complete"
    assert len(merged["trials"]) == sum(len(r["trials"]) for r in runs)
    for repeat, run in enumerate(runs):
        mine = [t for t in merged["trials"] if t["repeat"] == repeat]
        assert [t["derived"] for t in mine] == [t["derived"] for t in run["trials"]]
    assert all(t["repeat"] == 0 for r in runs for t in r["trials"])  # inputs untouched


def test_merge_of_an_interrupted_run_is_not_complete():
    runs = [fake.healthy_run(repeats=1), fake.healthy_run(repeats=1)]
    runs[1]["status"] = "interrupted"
    assert regress.merge(runs, "x")["status"] == "interrupted"


def test_sides_alternate_and_repeat_i_of_each_side_ran_together(tmp_path, repo, private_tmp):
    runner = FakeRunner()
    assert regress.regress(_args(tmp_path, "--repeats", "4"), runner, repo) == 0
    base, head = runner.calls[0], repo
    assert base != head and not base.exists()  # the worktree is gone again
    assert runner.calls == [base, head, head, base, base, head, head, base]
    out = tmp_path / "out"
    merged = {side: load_results(next(out.glob(f"*-{side}"))) for side in ("base", "head")}
    assert resolve_run(None, out).name.endswith("-head")
    for results in merged.values():
        assert sorted({t["repeat"] for t in results["trials"]}) == [0, 1, 2, 3]
    assert list(private_tmp.iterdir()) == [] and len(_worktrees(repo)) == 1


def _one_trial(results: dict, scenario: str, model: str, **changes) -> dict:
    for trial in results["trials"]:
        if trial["scenario"] == scenario and trial["model"] == model:
            trial.update(changes)
    return results


def test_an_invalid_trial_is_measured_again_and_the_valid_one_kept(tmp_path, repo, capsys):
    baseline = fake.write(fake.healthy_run(seed=1), tmp_path / "baseline")
    first = _one_trial(fake.healthy_run(repeats=1, seed=2), "echo_clients", "thread",
                       status="invalid", reason="load generator fell behind")
    still = _one_trial(fake.healthy_run(repeats=1, seed=3), "echo_clients", "thread",
                       status="invalid", reason="load generator fell behind")
    again = _one_trial(fake.healthy_run(repeats=1, seed=4), "echo_clients", "thread",
                       server={"cpu_s": 123.0})
    runner = FakeRunner({repo: [first, still, again]})
    args = _args(tmp_path, "--baseline", str(baseline), "--repeats", "1")
    assert regress.regress(args, runner, repo) == 0
    assert runner.argvs[1][-4:] == runner.argvs[2][-4:] == ["--scenarios", "echo_clients",
                                                            "--models", "thread"]
    head = load_results(next((tmp_path / "out").glob("*-head")))
    thread = [t for t in head["trials"] if t["model"] == "thread"
              and t["scenario"] == "echo_clients"]
    assert [(t["status"], t["server"], t["repeat"]) for t in thread] == [
        ("ok", {"cpu_s": 123.0}, 0)]
    assert len(head["trials"]) == len(first["trials"])
    capsys.readouterr()


def test_a_point_invalid_every_time_stays_invalid_after_the_retries(tmp_path, repo, capsys):
    baseline = fake.write(fake.healthy_run(seed=1), tmp_path / "baseline")
    runs = [_one_trial(fake.healthy_run(repeats=1, seed=s), "echo_clients", "thread",
                       status="invalid") for s in range(2, 2 + 1 + regress.RETRIES)]
    runner = FakeRunner({repo: runs})
    args = _args(tmp_path, "--baseline", str(baseline), "--repeats", "1", "--retry-budget", "0")
    regress.regress(args, runner, repo)
    assert len(runner.calls) == 1 + regress.RETRIES
    head = load_results(next((tmp_path / "out").glob("*-head")))
    assert [t["status"] for t in head["trials"] if t["model"] == "thread"
            and t["scenario"] == "echo_clients"] == ["invalid"]
    capsys.readouterr()


# -- what fails the gate -----------------------------------------------------------------

@pytest.fixture
def gated_echo_cpu(monkeypatch):
    """The fake runs' echo_clients CPU/msg gated, every other metric informational."""
    monkeypatch.setattr(regress, "GATED", frozenset({("echo_clients", "cpu_per_msg_us")}))


def _judge(tmp_path, repo, head_runs: list[dict], capsys, *argv: str) -> tuple[int, dict]:
    runner = FakeRunner({repo: head_runs})
    junit = tmp_path / "ci" / "junit.xml"
    status = regress.regress(_args(tmp_path, "--repeats", "5", "--junit", str(junit), *argv),
                             runner, repo)
    report = json.loads(capsys.readouterr().out)
    assert report["reference"] is None  # both sides ran here, interleaved: raw values
    failures = ElementTree.parse(junit).getroot().findall(".//failure")
    assert len(failures) == report["summary"]["regression"]
    return status, report


def _slower(path: str, factor: float) -> list[dict]:
    return [fake.scale(fake.healthy_run(repeats=1, seed=100 + i), "thread", path, factor,
                       scenario="echo_clients") for i in range(5)]


def test_a_gated_metric_three_times_worse_fails(tmp_path, repo, capsys, gated_echo_cpu):
    status, report = _judge(tmp_path, repo, _slower(CPU, 3.0), capsys)
    assert status == 1 and report["exit_status"] == 1
    worse = [(c["scenario"], c["model"], c["metric"]) for c in report["cells"]
             if c["verdict"] == "regression"]
    assert worse == [("echo_clients", "thread", "cpu_per_msg_us")]


def test_an_informational_metric_three_times_worse_passes_and_says_so(tmp_path, repo, capsys,
                                                                       gated_echo_cpu):
    status, report = _judge(tmp_path, repo, _slower(P99, 3.0), capsys)
    assert status == 0 and report["exit_status"] == 0
    cell = next(c for c in report["cells"] if c["model"] == "thread" and c["metric"] == "p99_us"
                and c["scenario"] == "echo_clients")
    assert cell["ratio"] > 2.5 and "not gated" in cell["note"]
    assert not any(c["verdict"] == "regression" for c in report["cells"])


def test_a_gated_point_left_with_no_valid_trial_is_untested_not_passed(tmp_path, repo, capsys,
                                                                       gated_echo_cpu):
    # A busy machine: every trial of thread's gated point invalid, retries included.
    runs = [_one_trial(fake.healthy_run(repeats=1, seed=s), "echo_clients", "thread",
                       status="invalid", reason="load generator fell behind")
            for s in range(5 * (1 + regress.RETRIES))]
    status, report = _judge(tmp_path, repo, runs, capsys, "--retry-budget", "0")
    assert status == report["exit_status"] == 3
    untested = [(c["model"], c["metric"]) for c in report["cells"] if c["verdict"] == "untested"]
    assert untested == [("thread", "status")]


def test_a_gated_metric_with_too_few_valid_repeats_is_untested(tmp_path, repo, capsys,
                                                               gated_echo_cpu):
    def thread_invalid(seed: int) -> dict:
        return _one_trial(fake.healthy_run(repeats=1, seed=seed), "echo_clients", "thread",
                          status="invalid")

    # Three of five repeats invalid for thread, retries included: 5 vs 2 cannot reach p < 0.01.
    queue: list[dict] = []
    for repeat in range(5):
        queue += ([thread_invalid(repeat)] * (1 + regress.RETRIES) if repeat < 3
                  else [fake.healthy_run(repeats=1, seed=repeat)])
    status, report = _judge(tmp_path, repo, queue, capsys, "--retry-budget", "0")
    assert status == 3
    cell = next(c for c in report["cells"] if c["model"] == "thread"
                and c["metric"] == "cpu_per_msg_us" and c["scenario"] == "echo_clients")
    assert cell["verdict"] == "untested" and (cell["n_base"], cell["n_new"]) == (5, 2)


def test_a_busy_spell_past_the_retries_is_measured_again_at_the_end(tmp_path, repo, capsys,
                                                                    gated_echo_cpu):
    # The head's first three repeats and their retries all invalid for thread; by the end
    # the machine is quiet again (the fake runner's later runs are healthy).
    queue = [_one_trial(fake.healthy_run(repeats=1, seed=s), "echo_clients", "thread",
                        status="invalid") for s in range(1 + regress.RETRIES)] * 3
    queue += [fake.healthy_run(repeats=1, seed=s) for s in (10, 11)]
    status, report = _judge(tmp_path, repo, queue, capsys)
    assert status == report["exit_status"] == 0
    cell = next(c for c in report["cells"] if c["model"] == "thread"
                and c["metric"] == "cpu_per_msg_us" and c["scenario"] == "echo_clients")
    assert (cell["n_base"], cell["n_new"]) == (5, 5)
    head = load_results(next((tmp_path / "out").glob("*-head")))
    assert sorted(t["repeat"] for t in head["trials"] if t["model"] == "thread"
                  and t["scenario"] == "echo_clients") == [0, 1, 2, 3, 4]


def test_the_retry_budget_bounds_the_measuring_again(tmp_path, repo, capsys, gated_echo_cpu,
                                                     monkeypatch):
    # Invalid every time: the top-up stops once the budget is spent, and says so.
    def always_invalid(tree: Path, out: Path, argv: list[str]) -> Path:
        calls.append(tree)
        results = _one_trial(fake.healthy_run(repeats=1, seed=len(calls)), "echo_clients",
                             "thread", status="invalid")
        results["environment"]["git_commit"] = _git(tree, "rev-parse", "HEAD")
        clock[0] += 30.0  # each bench run takes half a minute
        return fake.write(results, out / f"run{len(calls)}")

    calls: list[Path] = []
    clock = [0.0]
    monkeypatch.setattr(regress.time, "monotonic", lambda: clock[0])
    status = regress.regress(_args(tmp_path, "--repeats", "5", "--retry-budget", "100"),
                             always_invalid, repo)
    assert status == 3
    first_pass = 2 * 5 * (1 + regress.RETRIES)  # both sides, every repeat and its retries
    assert first_pass < len(calls) <= first_pass + 100 / 30 + 1
    out, err = capsys.readouterr()
    assert "retry budget spent" in err
    # Invalid on both sides, judge.py has nothing to compare: the gate says it did not test.
    untested = [(c["scenario"], c["model"], c["metric"]) for c in json.loads(out)["cells"]
                if c["verdict"] == "untested"]
    assert untested == [("echo_clients", "thread", "status")]


def test_a_stored_baseline_is_judged_without_a_worktree(tmp_path, repo, capsys,
                                                        gated_echo_cpu, private_tmp):
    baseline = fake.write(fake.healthy_run(seed=1), tmp_path / "baseline")
    runner = FakeRunner({repo: _slower(CPU, 3.0)})
    status = regress.regress(_args(tmp_path, "--baseline", str(baseline)), runner, repo)
    assert status == 1 and runner.calls == [repo] * 5
    assert list(private_tmp.iterdir()) == []
    capsys.readouterr()


# -- the worktree of the base: made, and removed whatever happens --------------------------

def test_worktree_checks_out_the_ref_and_removes_it(repo, private_tmp):
    with regress.worktree(repo, "HEAD~1") as tree:
        assert (tree / "file.txt").read_text() == "version 1\n"
        assert len(_worktrees(repo)) == 2
    assert not tree.exists() and list(private_tmp.iterdir()) == []
    assert len(_worktrees(repo)) == 1


def test_an_error_inside_leaves_no_worktree_behind(repo, private_tmp):
    with pytest.raises(RuntimeError), regress.worktree(repo, "HEAD") as tree:
        raise RuntimeError("the run broke")
    assert not tree.exists() and list(private_tmp.iterdir()) == []
    assert len(_worktrees(repo)) == 1


def test_a_failing_bench_run_exits_2_and_leaves_nothing(tmp_path, repo, private_tmp, capsys):
    runner = FakeRunner(fail_at=3)
    assert regress.regress(_args(tmp_path), runner, repo) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "muxbench regress: `muxbench bench` wrote no new run"
    assert list(private_tmp.iterdir()) == [] and len(_worktrees(repo)) == 1


def test_an_unknown_ref_exits_2_with_one_line(tmp_path, capsys, private_tmp):
    status = main(["regress", "--base", "no-such-ref", "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"muxbench regress: --base no-such-ref: no such commit in {ROOT}"]
    assert list(private_tmp.iterdir()) == []


def test_a_run_reporting_another_commit_is_refused(tmp_path, repo, capsys):
    def other_code(tree: Path, out: Path, argv: list[str]) -> Path:
        results = fake.healthy_run(repeats=1)
        results["environment"]["git_commit"] = "0" * 40
        return fake.write(results, out / "run")

    assert regress.regress(_args(tmp_path), other_code, repo) == 2
    assert "did not run that tree's code" in capsys.readouterr().err


# -- the real runner: a fresh process whose code is the tree's ----------------------------

FAKE_CLI = '''\
import json, pathlib, sys
out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
run = out / "run1"
run.mkdir(parents=True)
(run / "results.json").write_text(json.dumps({"cli": __file__, "argv": sys.argv[1:]}))
(out / "latest").symlink_to("run1")
'''


def test_bench_run_imports_the_trees_code_not_the_installed_one(tmp_path):
    tree = stand_in_checkout(tmp_path / "tree", FAKE_CLI)
    run = regress.bench_run(tree, tmp_path / "out", ["--suite", "quick"])
    written = json.loads((run / "results.json").read_text())
    assert Path(written["cli"]).resolve() == (tree / "muxbench" / "cli.py").resolve()
    assert written["argv"][:3] == ["bench", "--suite", "quick"]


def test_bench_run_runs_a_base_from_before_muxbench_cli_its_own_way(tmp_path):
    """A base revision older than muxbench/cli.py kept the command in bench/cli.py:
    the gate runs that one, so it can still judge against such a base."""
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "__init__.py").write_text("")
    (tree / "bench" / "cli.py").write_text(FAKE_CLI)
    run = regress.bench_run(tree, tmp_path / "out", ["--suite", "quick"])
    written = json.loads((run / "results.json").read_text())
    assert Path(written["cli"]).resolve() == (tree / "bench" / "cli.py").resolve()
    assert written["argv"][:3] == ["bench", "--suite", "quick"]


def test_bench_run_that_writes_nothing_is_an_error(tmp_path):
    tree = stand_in_checkout(tmp_path / "tree", "raise SystemExit(1)\n")
    with pytest.raises(ResultsError, match="exit status 1"):
        regress.bench_run(tree, tmp_path / "out", [])


INTERRUPTIBLE = '''\
import sys
from pathlib import Path
from bench.gate import regress
regress.stop_on_signals()
try:
    regress.bench_run(Path(sys.argv[1]), Path(sys.argv[2]), [])
except KeyboardInterrupt:
    sys.exit(130)
'''


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_bench_run_even_with_sigint_ignored_at_start(tmp_path, sig):
    tree, out = stand_in_checkout(tmp_path / "tree", SLEEPING_BENCH), tmp_path / "out"
    out.mkdir()
    # As a shell starts a background job (`nohup make regress &`): SIGINT ignored.
    gate = spawn([*SIGINT_IGNORED, sys.executable, "-c", INTERRUPTIBLE, str(tree), str(out)],
                 cwd=ROOT)
    child = None
    try:
        assert wait_for(lambda: (out / "pid").is_file() and (out / "pid").read_text(), 30)
        child = int((out / "pid").read_text())
        gate.send_signal(sig)
        assert gate.wait(30) == 130
        assert wait_for(lambda: not Path(f"/proc/{child}").exists(), 10)
    finally:
        kill_group(gate)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child, signal.SIGKILL)


# -- the CI workflow ---------------------------------------------------------------------

WORKFLOW = ROOT / ".github" / "workflows" / "muxbench.yml"


@pytest.mark.skipif(importlib.util.find_spec("yaml") is None,
                    reason="pyyaml is not installed: the workflow's YAML is not checked")
def test_the_workflow_is_one_a_runner_accepts():
    import yaml

    workflow = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads a bare `on` as True; GitHub reads it as the key "on".
    triggers = workflow.get("on", workflow.get(True))
    assert "pull_request" in triggers
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    assert all(job.get("runs-on") for job in workflow["jobs"].values())
    assert all(("uses" in s) != ("run" in s) for s in steps)
    runs = " ".join(s.get("run", "") for s in steps)
    assert "make test" in runs and "make regress BASE=" in runs
    assert any(s.get("uses", "").startswith("actions/upload-artifact@v4") for s in steps)
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0


def test_python_m_bench_regress_still_answers():
    out = subprocess.run([sys.executable, "-m", "bench.gate.regress", "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--base REF" in out.stdout and "Exit status" in out.stdout
