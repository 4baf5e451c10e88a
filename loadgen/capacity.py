"""Before any connect: can this many connections be held, and how are they spread?

One process holds at most its RLIMIT_NOFILE descriptors, and one source
address reaches one server port from at most the ephemeral port range's
ports.  So a large count is split over worker processes (each below its
descriptor limit, with room for its own files) and over source addresses
(each below the port range).  What cannot be reached at all -- descriptors,
ports, memory, pids -- is said here, with the numbers, before the first
connect, rather than found out halfway through.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from muxbench import limits

# Descriptors a worker keeps for itself: stdio, its epoll, its channel to the
# parent, a timer, and what the interpreter opens on the way.
HEADROOM_FDS = 32
# Most worker processes the generator will make (--procs's ceiling too).
MAX_PROCS = 256
# Loopback addresses spread over when one address's ports are not enough;
# 127.0.0.1 is left to everything else on the machine, .251-.255 too.
AUTO_SOURCES = ("127.0.0.2", "127.0.0.250")
# Spread automatically once one address would need more than this share of
# its ports: connect() searches the range for a free port, and the fuller it
# is, the longer that takes.  Here 25,000 connections from one address took
# 18.1 s to make and probe, from two addresses 2.7 s.  (TIME_WAIT left by
# earlier runs holds some of the ports too.)
PORT_SLACK = 0.5
# Memory a held, idle connection costs the machine, both ends on loopback:
# the kernel's slab for each of its two sockets (4,549 and 5,049 B a socket
# in two runs here: Slab's rise over the rise in TCP sockets in use), the
# generator's ~420 B and a server's ~1,000 B (docs/c100k.md), rounded up.
CONNECTION_BYTES = 12_000
# What is left to everything else on the machine.
MEMORY_SHARE = 0.8


class CapacityError(Exception):
    """The count cannot be reached; the message says why, with the numbers."""


def parse_sources(text: str) -> list[str]:
    """`A` or `A-B` (IPv4, inclusive) -> the addresses, in order."""
    first, dash, last = text.partition("-")
    try:
        low = ipaddress.IPv4Address(first.strip())
        high = ipaddress.IPv4Address(last.strip()) if dash else low
    except ValueError:
        raise ValueError(f"not an IPv4 address or range A-B: {text!r}") from None
    if high < low:
        raise ValueError(f"range ends before it starts: {text!r}")
    if int(high) - int(low) >= 1 << 16:
        raise ValueError(f"more than 65536 addresses: {text!r}")
    return [str(ipaddress.IPv4Address(n)) for n in range(int(low), int(high) + 1)]


def auto_sources(count: int) -> list[str]:
    low, high = (int(ipaddress.IPv4Address(a)) for a in AUTO_SOURCES)
    return [str(ipaddress.IPv4Address(n)) for n in range(low, min(high + 1, low + count))]


@dataclass(frozen=True)
class Spread:
    """How the connections go out: this many processes, from these addresses."""

    procs: int
    sources: list[str]
    per_proc_fds: int      # descriptors a worker may use for connections
    nofile: limits.Nofile

    def describe(self) -> str:
        where = (f" from {len(self.sources)} source address(es)" if self.sources else "")
        return f"{self.procs} process(es){where}; {self.nofile.describe()}"


def _ports_per_source() -> tuple[int, str]:
    low, high = limits.port_range()
    return high - low + 1, f"ephemeral ports {low}-{high}"


def spread(clients: int, procs: int | None, cpus: int, sources: list[str] | None,
           loopback_v4: bool, nofile: limits.Nofile) -> Spread:
    """Decide processes and source addresses for `clients` held connections, or
    raise CapacityError.  `procs` None: as many as needed, at least one per CPU."""
    per_proc = nofile.soft - HEADROOM_FDS
    if per_proc < 1:
        raise CapacityError(f"descriptor limit {nofile.soft} leaves no room for connections "
                            f"({HEADROOM_FDS} kept for the process's own files)")
    needed = math.ceil(clients / per_proc)
    limit_text = (f"{per_proc} connections per process (RLIMIT_NOFILE {nofile.soft}, "
                  f"hard {nofile.hard}, {HEADROOM_FDS} kept for its own files)")
    if procs is None:
        if needed > MAX_PROCS:
            raise CapacityError(f"{clients} connections need {needed} processes at "
                                f"{limit_text}; at most {MAX_PROCS}")
        procs = max(needed, min(cpus, clients))
    elif needed > procs:
        raise CapacityError(f"--procs {procs} cannot hold {clients} connections: "
                            f"{limit_text}; use --procs {needed} or more, or leave it out")
    # The parent holds a channel to every worker.
    if procs + HEADROOM_FDS > nofile.soft:
        raise CapacityError(f"{procs} processes need {procs + HEADROOM_FDS} descriptors in "
                            f"the parent; RLIMIT_NOFILE is {nofile.soft}")
    free_pids = limits.pids_free()
    if procs + 1 > free_pids:
        raise CapacityError(f"{procs} processes need {procs + 1} pids; {free_pids} are free "
                            "(pid_max and threads-max less the tasks running)")
    free_files = limits.files_free()
    if clients > free_files:
        raise CapacityError(f"{clients} connections need as many open files; the machine "
                            f"has {free_files} left (fs.file-max less fs.file-nr)")
    _check_memory(clients)
    return Spread(procs, _sources(clients, sources, loopback_v4), per_proc, nofile)


def _sources(clients: int, given: list[str] | None, loopback_v4: bool) -> list[str]:
    ports, ports_text = _ports_per_source()
    if given:
        if clients > ports * len(given):
            need = math.ceil(clients / ports)
            raise CapacityError(f"{clients} connections to one server port need {need} source "
                                f"addresses ({ports_text}: {ports} per address); "
                                f"--source gives {len(given)}")
        return given
    usable = int(ports * PORT_SLACK)
    if clients <= usable:
        return []
    need = math.ceil(clients / usable)
    most = len(auto_sources(1 << 16))
    if not loopback_v4:
        raise CapacityError(f"{clients} connections to one server port need {need} source "
                            f"addresses ({ports_text}: {ports} per address); give this "
                            "host's addresses with --source A-B")
    if need > most:
        raise CapacityError(f"{clients} connections to one server port need {need} source "
                            f"addresses ({ports_text}); {AUTO_SOURCES[0]}-{AUTO_SOURCES[1]} "
                            f"has {most}")
    return auto_sources(need)


def _check_memory(clients: int) -> None:
    available = limits.mem_available()
    need = clients * CONNECTION_BYTES
    if available and need > available * MEMORY_SHARE:
        raise CapacityError(
            f"{clients} connections need about {need / 2**20:,.0f} MiB "
            f"({CONNECTION_BYTES:,} B each, both ends); MemAvailable is "
            f"{available / 2**20:,.0f} MiB, of which {MEMORY_SHARE:.0%} may be used")
