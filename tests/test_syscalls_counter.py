"""The system-call counter against a tree whose calls are known.

The tree makes exactly N getppid() calls when told, from a thread and from a
child process that both start after the counter is attached, as a thread- or
process-per-client server's do; only the calls made while the counter is
enabled may be counted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.sample import syscalls
from bench.sample.syscalls import SyscallCounter
from tests.support import kill_group, spawn, wait_for

CALLS = 20_000
# What the tree itself does around the calls in the window: reading its orders,
# writing its replies, starting and joining a thread, forking and reaping a child.
OVERHEAD = 2_000

TREE = textwrap.dedent(f"""
    import os, sys, threading
    def calls():
        for _ in range({CALLS}):
            os.getppid()
    for line in sys.stdin:
        if line.strip() == "thread":
            worker = threading.Thread(target=calls); worker.start(); worker.join()
        elif line.strip() == "child":
            pid = os.fork()
            if pid == 0:
                calls(); os._exit(0)
            os.waitpid(pid, 0)
        print("done", flush=True)
""")


def _order(proc: subprocess.Popen, what: str) -> None:
    proc.stdin.write(what + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "done"


def _sleeping(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rpartition(")")[2].split()[0] == "S"


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf is not installed")
def test_only_the_calls_inside_the_window_are_counted_in_threads_and_children_alike():
    tree = spawn([sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 text=True)
    counter = None
    try:
        counter = SyscallCounter([tree.pid])
        _order(tree, "thread")  # before the window: not counted
        counter.enable()
        _order(tree, "thread")
        _order(tree, "child")
        counter.disable()
        _order(tree, "child")  # after it: not counted
        count, why = counter.close()
        counter = None
        assert why is None
        assert 2 * CALLS <= count < 2 * CALLS + OVERHEAD
    finally:
        if counter is not None:
            counter.close()
        kill_group(tree)


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf is not installed")
def test_a_tree_that_never_runs_in_the_window_made_no_calls():
    tree = spawn([sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 text=True)
    try:
        _order(tree, "nothing")
        assert wait_for(lambda: _sleeping(tree.pid))  # blocked, reading its next order
        counter = SyscallCounter([tree.pid])
        counter.enable()
        counter.disable()
        assert counter.close() == (0, None)
    finally:
        kill_group(tree)


def test_without_perf_the_reason_is_given_and_nothing_is_started(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    counter = SyscallCounter([os.getpid()])
    counter.enable()
    counter.disable()
    count, why = counter.close()
    assert count is None and "perf is not installed" in why


@pytest.mark.parametrize("text, count", [
    ("# started on ...\n\n12345,,raw_syscalls:sys_enter,500316790,100.00,,\n", 12345),
    ("<not counted>,,raw_syscalls:sys_enter,0,100.00,,\n", 0),
    ("<not supported>,,raw_syscalls:sys_enter,0,100.00,,\n", None),
    ("", None)])
def test_perf_output_is_read_as_a_count_or_none(text, count):
    assert syscalls.parse(text) == count
