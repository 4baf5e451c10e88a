"""Fixtures shared by the test files (each block says what it provides)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path

import pytest

from bench.results import load_results, resolve_run
from tests.support import MUXBENCH, ROOT, spawn

# ---- quick_run: one real quick-suite run per test session ---------------------------
QUICK_RUN_TIMEOUT = 600.0  # the suite is designed for 2 min; a loaded machine is slower


def run_bench(out: Path, *args: str, timeout: float = QUICK_RUN_TIMEOUT) -> tuple[int, str]:
    """Run `muxbench bench --out OUT ARGS...`; returns (exit status, stderr).

    On a timeout the run gets SIGINT first, which makes it kill its servers and
    load generators (they live in their own sessions, out of reach of a group
    kill of the orchestrator) before it is killed itself.
    """
    proc = spawn([*MUXBENCH, "bench", "--out", str(out), *args], cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        proc.kill()
        _, err = proc.communicate()
        err += f"\n(timed out after {timeout:.0f} s)"
    return proc.returncode, err


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a real `muxbench bench --suite quick` run (results.json inside)."""
    out = tmp_path_factory.mktemp("quick-run")
    status, err = run_bench(out, "--suite", "quick")
    if status != 0:
        pytest.fail(f"quick suite exited with status {status}:\n{err[-4000:]}", pytrace=False)
    run_dir = resolve_run(None, out)
    load_results(run_dir)  # a run that cannot be read fails here, not in every user
    return run_dir
# ---- end quick_run --------------------------------------------------------------------
