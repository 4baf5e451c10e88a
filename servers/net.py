"""Socket plumbing shared by every model: the seed's `tcp_listen()` done right.

The textbook helper wraps socket/bind/listen, sets no SO_REUSEADDR and exits on
error.  This one follows UNP: getaddrinfo (so IPv4 and IPv6 both work),
SO_REUSEADDR (a restarted server does not wait out TIME_WAIT), and a large
backlog (Python's default is small; an overflowing accept queue shows up as
1 s / 3 s SYN-retransmit latency outliers that look like the server's fault).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import resource
import socket

from servers.limits import refuse

log = logging.getLogger("muxbench.serve")


class ListenError(Exception):
    """The server cannot listen where it was asked to (port in use, bad address)."""


def somaxconn(default: int = 4096) -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except (OSError, ValueError):
        return default


def tcp_listen(
    host: str = "127.0.0.1", port: int = 0, *, nonblocking: bool = False,
    backlog: int | None = None, reuse_port: bool = False,
) -> socket.socket:
    """Return a listening TCP socket bound to host:port, or raise ListenError.

    reuse_port: SO_REUSEPORT, so that other sockets with it may bind the same
    port, each with its own accept queue (the reuseport model)."""
    backlog = min(somaxconn(), 4096) if backlog is None else backlog
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve {host!r}: {exc.strerror}") from None
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        if nonblocking:
            set_nonblocking(sock)
        return sock
    reason = last.strerror if last and last.strerror else str(last)
    raise ListenError(f"cannot listen on {format_address((host, port))}: {reason}")


class Acceptor:
    """accept() that survives what a busy server meets.

    `accept()` returns (sock, addr) for a connection to serve, (None, addr)
    for one that had to be shed, or None when nothing is pending.
    """

    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        # One descriptor held in reserve, so that running out of them can
        # still be answered (see accept()).
        self._spare = os.open(os.devnull, os.O_RDONLY)

    def accept(self) -> tuple[socket.socket | None, tuple] | None:
        try:
            return self.listener.accept()
        except BlockingIOError:
            return None
        except (ConnectionAbortedError, ConnectionResetError):
            # Reset between the readiness report and accept(): nothing to serve.
            return None
        except OSError as exc:
            if exc.errno not in (errno.EMFILE, errno.ENFILE):
                raise
        # Out of descriptors.  The connection stays queued and the listener
        # stays readable, so a level-triggered loop would spin on it at 100%
        # CPU.  Give back the spare descriptor, take the connection and close
        # it at once -- the client sees a clean close instead of a hang --
        # then reserve the spare again.
        os.close(self._spare)
        try:
            sock, addr = self.listener.accept()
            sock.close()
        except OSError:
            return None
        finally:
            self._spare = os.open(os.devnull, os.O_RDONLY)
        refuse("descriptors", "refused %s: out of file descriptors (RLIMIT_NOFILE %d)",
               format_address(addr), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        return None, addr

    def client(self) -> tuple[socket.socket, str] | None:
        """The next connection to serve, with its peer's name; None when there
        is none (nothing pending, or what was pending had to be shed)."""
        accepted = self.accept()
        if accepted is None or accepted[0] is None:
            return None
        return accepted[0], format_address(accepted[1])

    def close(self) -> None:
        if self._spare >= 0:  # once only: a second os.close could hit the fd's next owner
            os.close(self._spare)
            self._spare = -1


def at_capacity(max_clients: int | None, serving: int, peer: str) -> bool:
    """--max-clients: True, with the refusal logged, when one more client is too many."""
    if max_clients is None or serving < max_clients:
        return False
    refuse("max-clients", "refused %s: already serving --max-clients=%d", peer, max_clients)
    return True


def write_or_queue(sock: socket.socket, outbox, data: bytes, flags: int = 0) -> bool:
    """Write directly; queue in `outbox` only what the kernel did not take.

    Returns True when something was queued (the caller must now watch for
    writability).  Anything already queued goes first, so then nothing is
    written.  Raises OSError when the peer is gone and OutputLimitExceeded
    when the queue passes its limit.
    """
    if not outbox:
        try:
            sent = sock.send(data, flags)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return False
        data = data[sent:]
    outbox.push(data)
    return True


def set_nonblocking(sock: socket.socket) -> None:
    """O_NONBLOCK through fcntl, as the seed does (sock.setblocking does the same)."""
    flags = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
    fcntl.fcntl(sock.fileno(), fcntl.F_SETFL, flags | os.O_NONBLOCK)


def tune(sock: socket.socket) -> None:
    """Per-connection options every model sets on an accepted socket.

    Without TCP_NODELAY, Nagle's algorithm holds back a small write while an
    earlier one is unacknowledged, which adds ~40 ms stalls to any message the
    peer sends in more than one write.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def format_address(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """Inverse of format_address: 'h:p' or '[v6]:p' -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)
