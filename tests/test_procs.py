"""muxbench/procs.py: what every child it starts begins with, and what a stop records.

The harness, the regression gate, the speed scripts and these tests all start
their children there; tests/test_orphans.py checks that none outlives its
starter.
"""

from __future__ import annotations

import signal
import subprocess
import sys

from muxbench import procs
from tests.support import ROOT, SIGINT_IGNORED, kill_group, spawn

READY_TIMEOUT = 60.0  # a bound for a busy machine, not a measurement


# A starter's own signal dispositions, then those of two children it starts: a
# program with no start-up of its own (cat), and Python, which has one.
SIGNALS_PROBE = """
import subprocess, sys
sys.path.insert(0, {root!r})
from tests.support import spawn

def output(argv):
    return spawn(argv, stdout=subprocess.PIPE, text=True).communicate(timeout=60)[0]

print(open("/proc/self/status").read())
print(output(["cat", "/proc/self/status"]))
probe = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
print("KeyboardInterrupt:", output([sys.executable, "-c", probe]).strip())
"""
RESET = (signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ)


def test_a_child_starts_with_the_signals_a_starter_ignores_at_their_defaults():
    # An ignored signal stays ignored across exec: a Python starter ignores
    # SIGPIPE and SIGXFSZ, and one started in the background SIGINT too, which
    # would leave a Python child without KeyboardInterrupt, deaf to Ctrl-C.
    out = procs.run([*SIGINT_IGNORED, sys.executable, "-c", SIGNALS_PROBE.format(root=str(ROOT))],
                    timeout=60, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True)
    assert out.returncode == 0, out.stderr
    starter, child = (int(line.split()[1], 16) for line in out.stdout.splitlines()
                      if line.startswith("SigIgn:"))
    for sig in RESET:
        bit = 1 << (sig - 1)
        assert starter & bit, f"the starter does not ignore {sig.name}: nothing is tested"
        assert not child & bit, f"its child ignores {sig.name}"
    assert "KeyboardInterrupt: True" in out.stdout.splitlines()


# A server that ignores SIGTERM, as do the children it forks before it says it is ready.
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        time.sleep(120)
        os._exit(0)
print("ready", flush=True)
time.sleep(120)
"""


def test_a_stop_counts_a_stubborn_group_once_and_leaves_none_of_it():
    children = 3
    proc = spawn([sys.executable, "-c", STUBBORN, str(children)], stdout=subprocess.PIPE,
                 text=True)
    try:
        assert procs.read_ready_line(proc, READY_TIMEOUT) == "ready\n"
        record = procs.stop_group(proc, grace=0.5)
        assert record["graceful"] is False
        # The server itself (once, though it is also a member of its group) and its children.
        assert record["leftover_procs"] == record["killed"] == children + 1
        assert record["remaining_after_kill"] == 0
        assert procs.group_members(proc.pid) == []
    finally:
        kill_group(proc)
