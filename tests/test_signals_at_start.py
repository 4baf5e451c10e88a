"""SIGTERM or SIGINT, sent whenever a server is starting up, stops it with exit 0.

Where a signal goes depends on what is in place when it lands: the Python
handler, the wake fd, the signal mask, an event loop's own machinery.  A server
changes these on its way up, and a signal that lands between two changes may
find them half made -- uvloop's loop takes a signal in three steps, and one
landing between the first and the last was noted and never acted on.  Sent
from outside the instant the listening line is read, it hit that window about
twice in 150 starts.

So the first test does not aim by timing.  It runs the server under PRELUDE,
which wraps each function of the `signal` module that changes how signals are
taken and, right after the k-th such call, sends the process its own signal:
every k the server calls from its start until it serves, each in its own run
(for the models other than asyncio and uvloop, from where their own start-up
begins: what comes before is common to all).
Once the line is out, the contract says exit 0.  Before it, the server has
its handlers from its first such call on (servers/shutdown.py), so a signal
must stop it with exit 0 too, line or no line, and never with a traceback.

The second test is the plain case, without the prelude: the signal sent the
moment the line is read, as a harness does when a trial ends at once.
"""

from __future__ import annotations

import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from muxbench.procs import group_members
from servers.models import MODELS
from tests.support import MUXBENCH, ROOT, kill_group, model_params, read_line, spawn, wait_for

# Swept from process start, and with SIGINT as well: their loops take each signal on
# its own.  The other models are swept from the end of servers.shutdown.install().
LOOPS = ("asyncio", "uvloop")
CONTRACT_EXIT = 2.0  # seconds from the signal to exit 0
EXIT_TIMEOUT = 10.0  # a server still running after this lost its signal (the hang is the bug)
START_TIMEOUT = 30.0  # for the line, or the exit, to come from a process just started
BATCH = 4  # processes started together: the runs are independent, the CPUs are two

PRELUDE = r"""
import os, signal, socket, sys
AFTER, SIGNUM, PID = int(sys.argv[1]), int(sys.argv[2]), os.getpid()
calls = 0

def note(text):
    os.write(2, f"@{text}\n".encode())

def wrap(name):
    real = getattr(signal, name)
    def call(*args, **kwargs):
        global calls
        result = real(*args, **kwargs)
        if os.getpid() == PID:  # not a forked child's reset
            calls += 1
            note(f"call {calls} {name}")
            if calls == AFTER:
                note("injected")
                os.kill(PID, SIGNUM)
        return result
    setattr(signal, name, call)

for name in ("signal", "set_wakeup_fd", "siginterrupt", "pthread_sigmask"):
    wrap(name)  # before uvloop is imported: it keeps its own references to them

accept = socket.socket.accept
def accepted(self):
    result = accept(self)
    note("accepted")  # what follows is a client's, not start-up
    return result
socket.socket.accept = accepted

from servers import shutdown
install = shutdown.install
def installed():
    wake_fd = install()
    note("installed")  # what follows is the model's own start-up
    return wake_fd
shutdown.install = installed

from muxbench.cli import main
sys.exit(main(sys.argv[3:]))
"""


def prelude_argv(model: str, after: int, signum: int) -> list[str]:
    return [sys.executable, "-c", PRELUDE, str(after), str(signum), "serve", model]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """argv in a session of its own, stdout piped, stderr to `log`."""
    with open(log, "wb") as err:
        return spawn(argv, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)


def in_batches(cases: list, launch: Callable, judge: Callable) -> list[str]:
    """Start BATCH cases at a time, then judge(started) the batch: its failures.

    Every process of a batch is killed, group and all, once it is judged."""
    failures: list[str] = []
    for first in range(0, len(cases), BATCH):
        started = []
        try:
            for case in cases[first:first + BATCH]:
                started.append((case, launch(case)))
            failures += judge(started)
        finally:
            for _, proc in started:
                kill_group(proc)
    return failures


def start_up_calls(model: str, log: Path) -> list[int]:
    """The prelude's call numbers to sweep: those the server makes before it serves.

    One run without injection, to learn them; it serves an echo, then gets
    SIGTERM and must exit 0 like any other.
    """
    proc = start(prelude_argv(model, 0, signal.SIGTERM), log)
    try:
        line = read_line(proc, START_TIMEOUT)
        assert "listening on" in line, log.read_text()
        port = int(line.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT) as sock:
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"  # it serves: its start-up calls are all made
        notes = log.read_text().split("@accepted")[0]
        own = notes.split("@installed")[1]
        # The loop's own steps must be seen, or the prelude wrapped too late.
        assert model not in LOOPS or "@call" in own, notes
        if model not in LOOPS:  # their sweeps cover servers.shutdown.install() for all
            notes = own
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_TIMEOUT) == 0, log.read_text()
    finally:
        kill_group(proc)
    return [int(note.split()[1]) for note in notes.splitlines() if note.startswith("@call ")]


def judge_injected(case: tuple[int, signal.Signals, Path], proc: subprocess.Popen) -> str | None:
    """What went wrong in a run whose prelude signalled itself, if anything."""
    k, signum, log = case
    line, status = "", None
    try:
        line = read_line(proc, START_TIMEOUT)  # "" when it stopped before the line
        status = proc.wait(EXIT_TIMEOUT)
    except (TimeoutError, subprocess.TimeoutExpired):
        pass  # status None: still running
    text = log.read_text(errors="replace")
    when = f"{signum.name} right after signal call {k}, " + (
        "after the line" if "listening on" in line else "before the line (or no line)")
    if "@injected" not in text:
        return f"{when}: the call never came\n{text}"
    if status != 0 or "Traceback" in text:
        outcome = "still running" if status is None else f"exit status {status}"
        return f"{when}: {outcome}\n{text}"
    if not wait_for(lambda: not group_members(proc.pid), CONTRACT_EXIT):
        return f"{when}: a process of its group outlived it"
    return None


@pytest.mark.parametrize("model", model_params(MODELS))
def test_a_signal_right_after_any_start_up_step_stops_the_server_with_exit_0(model, tmp_path):
    calls = start_up_calls(model, tmp_path / "calibration.log")
    signals = (signal.SIGTERM, signal.SIGINT) if model in LOOPS else (signal.SIGTERM,)
    cases = [(k, signum, tmp_path / f"{k}-{signum.name}.log")
             for k in calls for signum in signals]
    failures = in_batches(
        cases, lambda case: start(prelude_argv(model, *case[:2]), case[2]),
        lambda started: [problem for case, proc in started
                         if (problem := judge_injected(case, proc))])
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("model", model_params(MODELS))
def test_a_signal_the_moment_the_line_is_read_stops_the_server_with_exit_0(model, tmp_path):
    runs = 10 if model in LOOPS else 2
    cases = [((signal.SIGTERM, signal.SIGINT)[i % 2], tmp_path / f"{i}.log") for i in range(runs)]
    failures = in_batches(
        cases, lambda case: start([*MUXBENCH, "serve", model], case[1]), judge_on_line)
    assert not failures, "\n\n".join(failures)


def judge_on_line(started: list[tuple[tuple[signal.Signals, Path], subprocess.Popen]]) -> list[str]:
    """Signal each server as soon as its listening line is read; then judge its exit."""
    sent, exited, failures = {}, {}, []
    with selectors.DefaultSelector() as sel:
        for (signum, _), proc in started:
            sel.register(proc.stdout, selectors.EVENT_READ, (signum, proc))
        while len(sent) < len(started):
            ready = sel.select(START_TIMEOUT)
            assert ready, f"no listening line within {START_TIMEOUT:g} s"
            for key, _ in ready:
                signum, proc = key.data
                line = proc.stdout.readline()
                proc.send_signal(signum)
                sent[proc] = time.monotonic()
                sel.unregister(proc.stdout)
                assert "listening on" in line, f"server did not start: {line!r}"
    # Polled together, so that one slow exit does not count against the next.
    deadline = time.monotonic() + EXIT_TIMEOUT
    while len(exited) < len(started) and time.monotonic() < deadline:
        for _, proc in started:
            if proc not in exited and proc.poll() is not None:
                exited[proc] = time.monotonic()
        time.sleep(0.01)
    for (signum, log), proc in started:
        took = exited.get(proc, float("inf")) - sent[proc]
        if proc.returncode is None:
            failures.append(f"{signum.name}: still running {EXIT_TIMEOUT:g} s after it")
        elif proc.returncode != 0 or took > CONTRACT_EXIT:
            failures.append(f"{signum.name}: exit status {proc.returncode} {took:.2f} s after "
                            f"it\n{log.read_text(errors='replace')}")
        elif not wait_for(lambda proc=proc: not group_members(proc.pid),
                            CONTRACT_EXIT):
            failures.append(f"{signum.name}: a process of its group outlived it")
    return failures
