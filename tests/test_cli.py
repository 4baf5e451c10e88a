"""The `muxbench` command itself: version, the list of commands, a wrong command."""

from __future__ import annotations

import re
import subprocess

from muxbench.cli import COMMANDS
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
