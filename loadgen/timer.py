"""A nanosecond one-shot timer that an epoll loop can wait on (Linux timerfd).

epoll's own timeout has millisecond resolution, so an open-loop generator
that slept on it would send up to 1 ms late -- and, measuring response time
from the intended send, would charge that lateness to the server.  A timerfd
armed at the absolute CLOCK_MONOTONIC instant of the next send (the clock
behind time.perf_counter_ns on Linux) wakes epoll when it is due.  Python
3.11 has no os.timerfd_create, hence ctypes.  Before any loop runs, a plain
sleep does: `sleep_until`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import time

CLOCK_MONOTONIC = 1
TFD_TIMER_ABSTIME = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC


def sleep_until(t_ns: int) -> None:
    """Sleep until the time.perf_counter_ns() instant `t_ns` (no-op once past)."""
    delay = t_ns - time.perf_counter_ns()
    if delay > 0:
        time.sleep(delay / 1e9)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class Timer:
    """fd becomes readable at the instant given to arm(); read it with clear()."""

    def __init__(self) -> None:
        fd = _libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.fd = fd
        self._spec = _Itimerspec()

    def arm(self, when_ns: int) -> None:
        # An absolute time of 0 would disarm the timer; 1 ns is "already due".
        when_ns = max(1, when_ns)
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(when_ns, 1_000_000_000)
        if _libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None):
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)
