"""Reading /proc cheaply: a process's memory from smaps_rollup, a thread's
context switches, and how long a CPU was idle or stolen.

The sampler reads these for every process (and, without taskstats, every
thread) of a server's tree a few times a second, on the load generator's CPU,
so each read is one os.open/os.read and one parse of bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

# smaps_rollup lines -> MemorySample fields; every Private_* line is USS, as in psutil.
ROLLUP = {"rss": ("Rss:",), "uss": ("Private_Clean:", "Private_Dirty:", "Private_Hugetlb:"),
          "pss": ("Pss:",), "pss_anon": ("Pss_Anon:",)}


def read(path: str) -> bytes | None:
    """A /proc file's bytes, None once its process is gone.  os.open and
    os.read, not pathlib: with a thousand tasks to read on every tick, the
    file object and text decoding cost twice what the kernel does."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def rollup(pid: int) -> dict[str, int | None] | None:
    """A process's memory in bytes from /proc/PID/smaps_rollup (one read, one
    walk of its mappings); None once it has exited.  A field the kernel does
    not print is None."""
    text = read(f"/proc/{pid}/smaps_rollup")
    if text is None:
        return None
    kib: dict[str, int] = {}
    for line in text.splitlines()[1:]:  # the first line is the [rollup] pseudo-mapping
        name, value, *_ = line.split()
        kib[name.decode()] = int(value)
    return {field: (sum(kib[n] for n in names if n in kib) * 1024
                    if any(n in kib for n in names) else None)
            for field, names in ROLLUP.items()}


def tasks(pid: int) -> list[int]:
    """The ids of a process's live threads; [] once it has exited."""
    try:
        return [int(name) for name in os.listdir(f"/proc/{pid}/task") if name.isdigit()]
    except OSError:
        return []


_CTX_SWITCHES = re.compile(rb"^voluntary_ctxt_switches:\s*(\d+)\n"
                           rb"nonvoluntary_ctxt_switches:\s*(\d+)", re.MULTILINE)


def ctx_switches(pid: int, tid: int) -> tuple[int, int] | None:
    """A thread's (voluntary, involuntary) context switches; None once it has exited."""
    text = read(f"/proc/{pid}/task/{tid}/status")
    if text is None:
        return None
    found = _CTX_SWITCHES.search(text)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def idle_and_steal(cpus: Iterable[int]) -> tuple[float, float]:
    """Seconds these CPUs have spent idle (iowait included), and seconds the
    hypervisor kept them from running (steal), since boot.

    Their busy time is what the rest of the clock leaves.  The busy counters
    of /proc/stat (user, system, softirq) are sampled at the timer tick, and a
    process that wakes on its own timer and sleeps again between ticks -- an
    open-loop load generator -- hides from them: they showed a tenth of its
    CPU time.  Idle time a tickless kernel measures on entering and leaving
    idle, exactly, and steal time comes from the hypervisor's own clock;
    /proc/stat prints both in clock ticks, so a difference of two readings is
    good to two ticks (20 ms at 100 Hz).
    """
    wanted = {f"cpu{n}".encode() for n in cpus}
    idle = steal = 0
    for line in (read("/proc/stat") or b"").splitlines():
        name, *fields = line.split()
        if name in wanted:
            idle += int(fields[3]) + int(fields[4])
            steal += int(fields[7])
    tick = os.sysconf("SC_CLK_TCK")
    return idle / tick, steal / tick
