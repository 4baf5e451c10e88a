"""Context switches of a whole process, threads included, in one kernel request.

/proc keeps context switches per task: summing them for a server with a
thousand threads means reading a thousand status files, about 50 ms of the
load generator's CPU at the very moment a measurement window opens -- enough
to put it behind its send schedule.  The kernel's taskstats interface (generic
netlink, family "TASKSTATS") answers for a whole thread group at once, in well
under a millisecond, and its sum includes the threads that have already
exited, which /proc forgets.

Only the two counters are read.  `struct taskstats` (linux/taskstats.h) only
ever grows at its end, so their offsets hold for every version that has them.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
import threading

NETLINK_GENERIC = 16
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_ATTR_TGID = 2
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_TGID = 5
NVCSW_OFFSET = 272  # offsetof(struct taskstats, nvcsw); nivcsw follows it

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_GENL = struct.Struct("=BBH")      # genlmsghdr: cmd, version, reserved
_ATTR = struct.Struct("=HH")       # nlattr: length, type


def _attr(kind: int, payload: bytes) -> bytes:
    size = _ATTR.size + len(payload)
    return _ATTR.pack(size, kind) + payload + bytes(-size % 4)


def _attrs(data: bytes) -> dict[int, bytes]:
    found, at = {}, 0
    while at + _ATTR.size <= len(data):
        size, kind = _ATTR.unpack_from(data, at)
        if size < _ATTR.size:
            break
        found[kind & 0x3FFF] = data[at + _ATTR.size:at + size]  # without the nesting flags
        at += (size + 3) & ~3
    return found


class Taskstats:
    """A generic-netlink socket to the kernel's taskstats; `open()` or None."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.seq = 0
        self._lock = threading.Lock()  # one request and its reply at a time
        reply = self._ask(GENL_ID_CTRL, CTRL_CMD_GETFAMILY,
                          _attr(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"))
        self.family = struct.unpack("=H", _attrs(reply)[CTRL_ATTR_FAMILY_ID][:2])[0]

    @classmethod
    def open(cls) -> Taskstats | None:
        """None where the kernel has no taskstats or will not answer us: its
        requests need CAP_NET_ADMIN, so a user without it counts from /proc."""
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        except OSError:
            return None
        try:
            sock.bind((0, 0))
            kernel = cls(sock)
            if kernel.ctx_switches(os.getpid()) is not None:
                return kernel
        except (OSError, KeyError, struct.error):
            pass
        sock.close()
        return None

    def _ask(self, family: int, cmd: int, payload: bytes) -> bytes:
        """One request, its one reply's attributes; OSError for the kernel's error."""
        with self._lock:
            self.seq += 1
            body = _GENL.pack(cmd, 1, 0) + payload
            self.sock.send(_HEADER.pack(_HEADER.size + len(body), family, NLM_F_REQUEST,
                                        self.seq, 0) + body)
            while True:
                data = self.sock.recv(65536)
                size, kind, _, seq, _ = _HEADER.unpack_from(data)
                if seq == self.seq:
                    break  # an older request's late reply is skipped
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, _HEADER.size)[0]
            raise OSError(code, os.strerror(code))
        return data[_HEADER.size + _GENL.size:size]

    def ctx_switches(self, tgid: int) -> tuple[int, int] | None:
        """(voluntary, involuntary) of every thread of process `tgid`, living or
        exited; None once the process is gone."""
        try:
            reply = self._ask(self.family, TASKSTATS_CMD_GET,
                              _attr(TASKSTATS_CMD_ATTR_TGID, struct.pack("=I", tgid)))
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return None
            raise
        stats = _attrs(_attrs(reply)[TASKSTATS_TYPE_AGGR_TGID])[TASKSTATS_TYPE_STATS]
        return struct.unpack_from("=QQ", stats, NVCSW_OFFSET)


@functools.cache
def shared() -> Taskstats | None:
    """The process's one taskstats socket, shared by every sampler; None where
    there is none."""
    return Taskstats.open()
