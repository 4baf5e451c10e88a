"""The uring model's availability as `muxbench models` reports it, on the real CLI.

The per-model matrix (test_servers.py and its neighbours) serves uring like every
other model; what is particular to it is that a machine may lack the binding or
forbid io_uring, and the catalogue must then say so rather than crash.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess

import pytest

from tests.support import MUXBENCH, ROOT


def models_lines(env: dict[str, str]) -> dict[str, str]:
    """Run `muxbench models`; each model's name -> the rest of its line."""
    done = subprocess.run([*MUXBENCH, "models"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = {}
    for line in done.stdout.splitlines():
        name, _, rest = line.partition(" ")
        lines[name] = rest.strip()
    return lines


def test_models_says_uring_is_unavailable_when_its_binding_cannot_be_imported(tmp_path):
    # A module of the binding's name ahead of the real one on sys.path, which
    # fails to import as a broken or foreign build would.
    (tmp_path / "liburing.py").write_text(
        'raise ImportError("no io_uring binding on this machine")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    lines = models_lines(env)
    assert lines["uring"].startswith("unavailable: "), lines["uring"]
    assert "no io_uring binding on this machine" in lines["uring"]
    assert "muxbench[uring]" in lines["uring"]  # says how to get it
    # Only uring is hit: every other model is still listed, epoll as available.
    assert lines["epoll"].startswith("available"), lines["epoll"]
    assert {"select", "poll", "epoll", "asyncio"} <= set(lines)


def test_models_reports_uring_as_the_machine_allows():
    """Without the shadow, the line follows the machine: available where the binding
    is installed and io_uring allowed, otherwise unavailable and saying why."""
    lines = models_lines(dict(os.environ))
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            disabled = f.read().strip()
    except OSError:
        disabled = "0"  # a kernel without the switch allows io_uring
    if importlib.util.find_spec("liburing") is None:
        assert lines["uring"].startswith("unavailable: liburing"), lines["uring"]
    elif disabled == "2":
        assert lines["uring"].startswith("unavailable: "), lines["uring"]
        assert "io_uring_disabled" in lines["uring"]
    elif disabled == "0":
        assert lines["uring"].startswith("available"), lines["uring"]
    else:
        pytest.skip("io_uring_disabled=1: allowed only to members of io_uring_group")
