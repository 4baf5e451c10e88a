"""How many clients a model can hold here, and how it says that it refuses the rest.

A server at a limit -- its descriptors, select's FD_SETSIZE, --max-clients,
pids for threads or processes -- turns new clients away and keeps serving
the ones it has.  Ten thousand clients knocking must not become ten thousand
log lines, so each kind of refusal is logged once, then at most once a
minute with the count since.

The thread and fork models would otherwise go on until the machine, not the
server, gives out (pids, map entries, memory): their --max-clients default
is derived from what this machine has, and said at start.
"""

from __future__ import annotations

import logging
import time

from muxbench import limits

log = logging.getLogger("muxbench.serve")

# Seconds between two log lines about refusals of one kind.
REFUSAL_LOG_INTERVAL = 60.0
# Descriptors a process keeps for its own files beside its clients'.
HEADROOM_FDS = 32
# Share of MemAvailable a model may plan to fill with its clients.
MEMORY_SHARE = 0.5
# Memory areas (map entries) a client thread adds to the process: its stack,
# the guard page below it, its receive buffer and the allocator's; 4.06
# measured here over 500, 4.005 over 12,000.
MAPS_PER_THREAD = 4
# Map entries kept free for the interpreter's own growth: at the very edge of
# vm.max_map_count a thread's start or its buffer's mmap fails (ENOMEM), and
# the client is accepted and then dropped instead of refused with the others.
MAP_MARGIN = 2048
# What a client thread costs: its kernel stack (16 KiB on x86-64), its user
# stack's touched pages and the interpreter's thread state -- MemAvailable
# fell 17 KiB per echo client here; rounded up for the socket's buffers.
THREAD_BYTES = 64 * 1024
# What a forked echo child costs: 1.40 MiB PSS each, MemAvailable 1.33 MiB
# down per child, measured here over 200 (the interpreter's copy-on-write).
CHILD_BYTES = 3 << 19
# pids left to the rest of the machine.
PID_MARGIN = 256


class _Kind:
    __slots__ = ("count", "next")

    def __init__(self) -> None:
        self.count = 0
        self.next = 0.0


_kinds: dict[str, _Kind] = {}


def refuse(kind: str, message: str, *args: object) -> None:
    """Log a refusal of this kind, unless one was logged in the last minute
    (then it is counted, and the count goes into the next line)."""
    state = _kinds.setdefault(kind, _Kind())
    state.count += 1
    now = time.monotonic()
    if now < state.next:
        return
    since = state.count - 1
    state.count, state.next = 0, now + REFUSAL_LOG_INTERVAL
    tail = f"; {since} more since the last such line" if since else ""
    log.warning(message + f" (said at most once a minute{tail})", *args)


def _clients(bounds: dict[str, int], model: str) -> int:
    """The smallest of the bounds, said in one line with what bound it."""
    name, most = min(bounds.items(), key=lambda item: item[1])
    others = ", ".join(f"{k} {v:,}" for k, v in bounds.items() if k != name)
    log.info("%s: at most %d clients by default (--max-clients): %s binds (%s)",
             model, max(1, most), name, others)
    return max(1, most)


def thread_clients(private: bool) -> int:
    """--max-clients for the thread model: descriptors, pids, map entries, memory.
    A client takes one thread for echo (`private`), two for chat (a writer too)."""
    per_client = 1 if private else 2
    maps_now = _maps_now()
    return _clients({
        "descriptors": limits.raise_nofile().soft - HEADROOM_FDS,
        "pids": (limits.pids_free() - PID_MARGIN) // per_client,
        "map entries": (limits.read_int("sys/vm/max_map_count", 65530) - maps_now
                        - MAP_MARGIN) // (MAPS_PER_THREAD * per_client),
        "memory": int(limits.mem_available() * MEMORY_SHARE) // (THREAD_BYTES * per_client),
    }, "thread")


def fork_clients(private: bool) -> int:
    """--max-clients for the fork model: pids and memory (and, for chat, the hub's
    descriptors: it holds one end of a pair per child)."""
    bounds = {
        "pids": limits.pids_free() - PID_MARGIN,
        "memory": int(limits.mem_available() * MEMORY_SHARE) // CHILD_BYTES,
    }
    if not private:
        bounds["descriptors"] = limits.raise_nofile().soft - HEADROOM_FDS
    return _clients(bounds, "fork")


def _maps_now() -> int:
    try:
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0
