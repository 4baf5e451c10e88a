"""The `muxbench` command itself: version, the list of commands, a wrong command, and the
gate's commands as a CI runs them."""

from __future__ import annotations

import copy
import re
import subprocess

from bench.gate.invariants import INVARIANTS
from muxbench.cli import COMMANDS
from tests import fake_results as fake
from tests.support import MUXBENCH, ROOT


def muxbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MUXBENCH, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_version_is_the_one_in_pyproject() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    wanted = re.search(r'^version = "([^"]+)"$', pyproject, re.MULTILINE).group(1)
    run = muxbench("--version")
    assert (run.returncode, run.stdout, run.stderr) == (0, f"muxbench {wanted}\n", "")


def test_help_lists_every_command() -> None:
    run = muxbench("--help")
    assert run.returncode == 0
    for name, (_, help_text) in COMMANDS.items():
        assert f"    {name} " in run.stdout and help_text in run.stdout


def test_a_missing_or_unknown_command_is_a_usage_error() -> None:
    for args in ((), ("nosuch",)):
        run = muxbench(*args)
        assert run.returncode == 2 and run.stdout == ""
        assert run.stderr.startswith("usage: muxbench") and "Traceback" not in run.stderr


# -- the gate's two commands, as a CI or a person runs them -------------------------------


def test_check_judges_a_stored_run_by_its_exit_status(tmp_path) -> None:
    """`muxbench check RUN`: 0 when every invariant holds, 1 on a violation (named),
    2 when there is no such run; a run id is looked up under --root."""
    good = fake.healthy_run()
    fake.write(good, tmp_path / "good")
    bad = copy.deepcopy(good)
    for trial in bad["trials"]:
        if (trial["scenario"], trial["model"]) == ("idle", "epoll"):
            trial["server"]["cpu_util"] = 0.9  # as much as polling: not >= 20x less
    fake.write(bad, tmp_path / "bad")

    holds = muxbench("check", "good", "--root", str(tmp_path))
    assert (holds.returncode, holds.stderr) == (0, ""), holds.stdout
    verdicts = holds.stdout.splitlines()
    assert verdicts == [f"ok   {name}" for name in INVARIANTS]
    broken = muxbench("check", str(tmp_path / "bad"))
    assert broken.returncode == 1 and "FAIL polling_idle_cpu" in broken.stdout
    missing = muxbench("check", "nosuch", "--root", str(tmp_path))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.startswith("muxbench check: no such run: nosuch")


def test_regress_answers_as_a_command_of_muxbench() -> None:
    """`muxbench regress`: its help says what it exits with, and a base revision that
    does not exist is bad input (2), refused before anything is measured."""
    helped = muxbench("regress", "--help")
    assert helped.returncode == 0 and "--base REF" in helped.stdout
    assert "Exit status" in helped.stdout
    refused = muxbench("regress", "--base", "no-such-ref-anywhere", "--out", "/nonexistent")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == (f"muxbench regress: --base no-such-ref-anywhere: no such commit "
                              f"in {ROOT}\n")
