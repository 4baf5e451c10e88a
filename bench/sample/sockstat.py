"""The kernel's share of a connection: /proc/net/sockstat and the socket slabs.

A socket's memory is the kernel's, in no process's PSS: its struct sock, inode,
file and dentry come from slab caches, and the data waiting in its buffers is
counted in pages by sockstat's TCP "mem".  Read before the load connects and
again inside the window, the difference over the connections held is what one
connection costs the kernel -- both ends of it, on loopback.  The whole
machine's figures move with other work too, so a difference that comes out
negative is noise and is flagged, not stored.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

SOCKSTAT = Path("/proc/net/sockstat")
SLABINFO = Path("/proc/slabinfo")
PAGE = os.sysconf("SC_PAGESIZE")
# The slab caches one TCP socket takes objects from (epoll's for the models that use it).
SOCKET_SLABS = ("TCP", "sock_inode_cache", "filp", "dentry", "eventpoll_epi", "eventpoll_pwq")
TCP_KEYS = ("inuse", "orphan", "tw", "alloc", "mem")


def parse_sockstat(text: str) -> dict[str, int]:
    """The TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, and mem (pages)
    with mem_bytes beside it; sockets: used as sockets_used."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        label, _, rest = line.partition(":")
        words = rest.split()
        fields = dict(zip(words[::2], words[1::2], strict=False))
        if label == "TCP":
            out.update({key: int(fields[key]) for key in TCP_KEYS if key in fields})
        elif label == "sockets" and "used" in fields:
            out["sockets_used"] = int(fields["used"])
    if "mem" in out:
        out["mem_bytes"] = out["mem"] * PAGE
    return out


def parse_slabinfo(text: str, names: tuple[str, ...] = SOCKET_SLABS) -> int:
    """Bytes of the active objects of the `names` caches in a /proc/slabinfo text."""
    total = 0
    for line in text.splitlines():
        words = line.split()
        if len(words) > 3 and words[0] in names:
            total += int(words[1]) * int(words[3])  # active objects x object size
    return total


def read() -> dict[str, int] | None:
    """Now: sockstat's TCP figures and slab_bytes (when /proc/slabinfo is readable,
    as root); None where /proc/net/sockstat is missing."""
    try:
        out = parse_sockstat(SOCKSTAT.read_text())
    except OSError:
        return None
    with contextlib.suppress(OSError):  # not root: the buffer pages alone
        out["slab_bytes"] = parse_slabinfo(SLABINFO.read_text())
    return out


def per_connection(before: dict | None, window: dict | None, connections: int) -> float | None:
    """Kernel bytes per connection between the two readings; None when a reading is
    missing, nothing connected, or the difference is negative (noise from the rest
    of the machine, larger than what the connections took)."""
    if not (before and window and connections > 0):
        return None
    keys = [k for k in ("mem_bytes", "slab_bytes") if k in before and k in window]
    if not keys:
        return None
    grown = sum(window[k] - before[k] for k in keys)
    return grown / connections if grown >= 0 else None
