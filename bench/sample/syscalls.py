"""System calls a server's tree makes inside the load generator's window.

The count comes from `perf stat -e raw_syscalls:sys_enter`: a tracepoint the
kernel counts per task at a small cost per call, where strace would stop the
server at every call and so change how much each loop turn batches.  perf is
attached once the server listens, with its counters disabled (`-D -1`), and
told over its control pipe to enable them at the window's start and disable
them at its end, so start-up, warm-up and drain are not counted.  Counters are
inherited by the threads and processes the tree starts later (a thread or a
child per client), so the count covers the whole tree as the CPU figure does.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from muxbench import procs

EVENT = "raw_syscalls:sys_enter"
ACK_TIMEOUT = 2.0  # seconds perf has to acknowledge a command


def unavailable_reason() -> str | None:
    """Why system calls cannot be counted here, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed (Debian: apt-get install linux-perf)"
    return None


class SyscallCounter:
    """`perf stat` attached to a running tree, counting only while enabled."""

    def __init__(self, pids: list[int]) -> None:
        self.error = unavailable_reason()
        self._proc: subprocess.Popen | None = None
        if self.error is None:
            self._attach(pids)

    def _attach(self, pids: list[int]) -> None:
        self._ctl_r, self._ctl_w = os.pipe()
        self._ack_r, self._ack_w = os.pipe()
        self._dir = tempfile.TemporaryDirectory(prefix="muxbench-perf-")
        self._out = Path(self._dir.name, "counts")
        self._err = Path(self._dir.name, "stderr")
        try:
            with self._err.open("wb") as err:
                self._proc = procs.spawn(
                    ["perf", "stat", "-e", EVENT, "-x", ",", "-o", str(self._out), "-D", "-1",
                     "--control", f"fd:{self._ctl_r},{self._ack_w}",
                     "-p", ",".join(map(str, pids))],
                    stdout=subprocess.DEVNULL, stderr=err, pass_fds=(self._ctl_r, self._ack_w))
        except OSError as exc:
            self.error = f"perf cannot be started: {exc}"
            for fd in (self._ctl_w, self._ack_r):
                os.close(fd)
            self._dir.cleanup()
        finally:
            os.close(self._ctl_r)
            os.close(self._ack_w)

    def enable(self) -> None:
        self._command(b"enable")

    def disable(self) -> None:
        self._command(b"disable")

    def _command(self, word: bytes) -> None:
        """Send a command and wait for perf's ack: once it returns, the counters
        have changed state, so the window's edges are where the caller put them."""
        if self.error is not None:
            return
        try:
            os.write(self._ctl_w, word + b"\n")
            if not select.select([self._ack_r], [], [], ACK_TIMEOUT)[0]:
                raise OSError(f"no acknowledgement within {ACK_TIMEOUT:g} s")
            os.read(self._ack_r, 16)
        except OSError as exc:
            self.error = f"perf did not take '{word.decode()}': {exc}"

    def close(self) -> tuple[int | None, str | None]:
        """Stop perf: (the count, None) or (None, why there is none)."""
        if self._proc is None:
            return None, self.error
        try:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)  # perf writes its counts on SIGINT
                with contextlib.suppress(subprocess.TimeoutExpired):  # then killed below
                    self._proc.wait(ACK_TIMEOUT)
            procs.kill_group(self._proc)
            if self.error is None:
                count = parse(self._out.read_text() if self._out.exists() else "")
                if count is None:
                    said = self._err.read_text(errors="replace").strip()[-200:]
                    self.error = f"perf counted nothing: {said or 'no reason given'}"
                return count, self.error
            return None, self.error
        finally:
            for fd in (self._ctl_w, self._ack_r):
                os.close(fd)
            self._dir.cleanup()
            self._proc = None


def parse(text: str) -> int | None:
    """The count from `perf stat -x ,` output, or None.  A task-bound counter
    only runs while its task is on a CPU, so a tree that never ran while it was
    enabled (an idle server) reads "<not counted>": zero calls, not a failure."""
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == EVENT:
            if fields[0] == "<not counted>":
                return 0
            return int(fields[0]) if fields[0].isdigit() else None
    return None
