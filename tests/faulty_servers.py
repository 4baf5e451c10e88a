"""Servers that misbehave on purpose, for checking what a client reports.

Deliberately simple -- a thread per connection, blocking sockets -- and
message-aware: they read whole messages of a known size, so they can drop,
damage, repeat, swap or delay exactly one of them, and a test can demand that
the client under test report exactly that.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from tests.support import recv_exactly

# A fault: called with (connection index, message index, message) -> what to send back
# (a list of byte strings, possibly empty; it may sleep first), or None: die now.
Fault = Callable[[int, int, bytes], list[bytes] | None]


@dataclass
class FaultyServer:
    """An echo server (message size `size`) that applies `fault` to what it echoes."""

    size: int
    fault: Fault
    probe: bool = True  # echo workloads open with a one-byte probe; churn does not
    listener: socket.socket = field(init=False)
    peers: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _socks: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def start(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.listener.settimeout(0.05)
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                sock, addr = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._socks.append(sock)
                self.peers.append(addr[0])
            self._spawn(self._serve, sock, index)
            index += 1

    def _serve(self, sock: socket.socket, conn: int) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        seq = 0
        with contextlib.suppress(OSError):
            if self.probe:
                sock.sendall(recv_exactly(sock, 1))
            while not self._stop.is_set():
                message = recv_exactly(sock, self.size)
                if len(message) < self.size:
                    break
                reply = self.fault(conn, seq, message)
                if reply is None:
                    self.close_all()
                    break
                for chunk in reply:
                    sock.sendall(chunk)
                seq += 1
        with contextlib.suppress(OSError):
            sock.close()

    def close_all(self) -> None:
        """Die mid-run: stop listening and reset every connection."""
        self._stop.set()
        self.listener.close()
        with self._lock:
            for sock in self._socks:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self.close_all()
        for thread in self._threads:
            thread.join(5)


@contextlib.contextmanager
def faulty_server(size: int, fault: Fault) -> Iterator[FaultyServer]:
    server = FaultyServer(size, fault)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def echo(conn: int, seq: int, message: bytes) -> list[bytes]:
    return [message]


def at(target: int, then: Callable[[bytes], list[bytes] | None]) -> Fault:
    """Apply `then` to message `target` of the first connection; echo everything else."""
    def fault(conn: int, seq: int, message: bytes) -> list[bytes] | None:
        return then(message) if (conn, seq) == (0, target) else [message]
    return fault


def flipping(position: int) -> Callable[[bytes], list[bytes]]:
    def flip(message: bytes) -> list[bytes]:
        damaged = bytearray(message)
        damaged[position] ^= 0x01
        return [bytes(damaged)]
    return flip
