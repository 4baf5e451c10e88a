"""What this machine lets one process, and all of them, hold: descriptors, pids, memory.

The load generator checks a connection count against these before it
connects; the servers derive their default client limits from them.  Every
reading comes from /proc and the process's own rlimits, so a machine with
larger limits goes further without a change here.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def read_int(path: str, default: int = 0) -> int:
    """The first integer in a /proc file, or `default` when it cannot be read."""
    try:
        return int((PROC / path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def meminfo(key: str) -> int:
    """A /proc/meminfo field in bytes (0 when absent)."""
    try:
        for line in (PROC / "meminfo").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name == key:
                return int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def mem_available() -> int:
    return meminfo("MemAvailable")


def port_range() -> tuple[int, int]:
    """The ephemeral ports connect() picks from, inclusive."""
    try:
        text = (PROC / "sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(x) for x in text.split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def tasks_now() -> int:
    """Threads on the machine now (each takes a pid): /proc/loadavg's running/total."""
    try:
        return int((PROC / "loadavg").read_text().split()[3].split("/")[1])
    except (OSError, ValueError, IndexError):
        return 0


def pid_max() -> int:
    return read_int("sys/kernel/pid_max", 32768)


def threads_max() -> int:
    return read_int("sys/kernel/threads-max", 1 << 22)


def pids_free() -> int:
    """pids (processes or threads) that can still be made: pid_max and threads-max."""
    ceiling = min(pid_max(), threads_max())
    return max(0, ceiling - tasks_now())


def files_free() -> int:
    """Open files the whole machine may still make (fs.file-max less fs.file-nr)."""
    try:
        allocated, _, most = (int(x) for x in (PROC / "sys/fs/file-nr").read_text().split())
    except (OSError, ValueError):
        return 1 << 62
    return max(0, most - allocated)


@dataclass(frozen=True)
class Nofile:
    """RLIMIT_NOFILE as raise_nofile() left it."""

    soft: int
    hard: int
    before: int  # the soft limit found

    def describe(self) -> str:
        """One line that says what the process may hold, and whether it was raised."""
        if self.soft > self.before:
            return f"descriptor limit raised from {self.before} to {self.soft}"
        why = "the hard limit" if self.soft >= self.hard else "cannot be raised"
        return f"descriptor limit {self.soft} ({why})"


# The kernel's own hard RLIMIT_NOFILE for a process nobody configured: a hard
# limit below it was set on purpose (`ulimit -Hn 200`), and is kept.
KERNEL_HARD_NOFILE = 4096


def raise_nofile() -> Nofile:
    """Raise RLIMIT_NOFILE as far as this process may: both limits to fs.nr_open
    with CAP_SYS_RESOURCE (unless the hard one was lowered on purpose), else
    the soft one to the hard one."""
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(before, 1 << 20)
    nr_open = read_int("sys/fs/nr_open", hard) if hard >= KERNEL_HARD_NOFILE else hard
    for soft_to, hard_to in ((nr_open, nr_open), (hard, hard)):
        if soft_to <= before:
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_to, hard_to))
        except (ValueError, OSError):
            continue  # EPERM without CAP_SYS_RESOURCE: try the next, smaller, step
        return Nofile(soft_to, hard_to, before)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return Nofile(soft, hard, before)


def memory_of(pid: int | str = "self") -> tuple[int, int]:
    """(PSS, USS) of a process in bytes, from smaps_rollup; (0, 0) when unreadable."""
    fields: dict[str, int] = {}
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("Pss", "Private_Clean", "Private_Dirty"):
                fields[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return fields.get("Pss", 0), fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
