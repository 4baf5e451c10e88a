"""The slow-reader probe, on every model: only the member that does not read is dropped.

One member floods the room with 1 KiB lines as fast as TCP takes them (and
reads its own copies, steadily); another reads everything; a third joins and
never reads.  Whatever the model, the answer must be the same: the member that
does not read is disconnected, and every member that reads -- steadily, or
slowly in small bursts -- gets every line, in order, byte-exact, and stays.

Everything runs from one selector loop (tests.fuzz_support.drive) over
non-blocking sockets, so no full buffer can hang the test, and every wait has
a deadline.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import pytest

from tests.fuzz_support import Peer, drive
from tests.support import AVAILABLE, join_room, recv_exactly, serve, wait_for

MAX_OUTPUT = 256 * 1024
MAX_STALL = 1.0  # seconds a backlogged member may take nothing before it is dropped
LINE = 1024


def flood(mib: int) -> list[bytes]:
    """mib MiB of numbered 1 KiB lines, in 64 KiB chunks."""
    return [b"".join(b"%07d %s\n" % (i, b"x" * (LINE - 9)) for i in range(c * 64, c * 64 + 64))
            for c in range(mib * 16)]


DEADLINE = 30.0  # only a hang comes near it: each case takes seconds


@pytest.fixture(params=AVAILABLE)
def model(request) -> str:
    return request.param


@dataclass(eq=False)
class SlowReader(Peer):
    """A member that reads, but only `burst` bytes at a time, `pause` seconds apart."""

    burst: int = 32768
    pause: float = 0.01
    _next_read: float = 0.0

    @property
    def reading(self) -> bool:
        return super().reading and time.monotonic() >= self._next_read

    def _step_recv(self) -> None:
        before = len(self.received)
        try:
            data = self.sock.recv(self.burst)
        except BlockingIOError:
            return
        except OSError as exc:
            self.error = type(exc).__name__
            return
        if not data:
            self.eof = True
        self.received += data
        if len(self.received) > before:
            self._next_read = time.monotonic() + self.pause

    def next_wake(self, now: float) -> float | None:
        if self._next_read > now:
            return self._next_read - now
        return super().next_wake(now)


def member(server, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connect, so that the window is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(server.address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_to_close(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything left on sock, and whether the server closed it (EOF or RST) in time."""
    got = bytearray()
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
    return bytes(got), False


def flood_the_room(model: str, chunks: list[bytes], reader_class: type[Peer],
                   rcvbuf: int | None = None) -> None:
    """Flood, read, never read: see the module's docstring.  `rcvbuf` fixes the
    reading member's receive buffer (else the kernel grows it as it likes)."""
    with serve(model, "chat", "--max-output", str(MAX_OUTPUT),
               "--max-stall", str(MAX_STALL)) as server:
        # The idle one with a small window: the kernel hides little.
        socks = join_room(server, 3, lambda i: member(server, (4096, rcvbuf, None)[i]))
        idle, reading, flooding = socks
        try:
            idle_peer = idle.getsockname()
            reader = reader_class(reading, [])
            flooder = Peer(flooding, chunks)
            want = sum(map(len, chunks))

            def done() -> bool:
                return all(len(p.received) >= want or p.eof or p.error
                           for p in (reader, flooder))

            finished = drive([reader, flooder], done, DEADLINE)
            status = (f"reader {len(reader.received)} of {want} bytes "
                      f"(eof={reader.eof}, error={reader.error}), flooder "
                      f"{len(flooder.received)} (eof={flooder.eof}, error={flooder.error}); "
                      f"log:\n{server.log()}")
            assert finished, f"not done within {DEADLINE} s: {status}"
            for peer in (reader, flooder):
                assert not (peer.eof or peer.error), f"a reading member was cut: {status}"
                assert bytes(peer.received) == b"".join(chunks), status
            # Both are still members: a last line reaches each of them.
            reading.setblocking(True)
            flooding.setblocking(True)
            reading.sendall(b"still here\n")
            for sock in (reading, flooding):
                assert recv_exactly(sock, 11) == b"still here\n", server.log()
            # The member that never read was disconnected: after what its
            # buffers hold, EOF or RST -- and what it got is whole lines, in order.
            rest, closed = read_to_close(idle, 10.0)
            assert closed, f"the member that never reads is still connected; {status}"
            assert b"".join(chunks).startswith(rest)
            dropped = f"dropped {idle_peer[0]}:{idle_peer[1]}"
            assert wait_for(lambda: dropped in server.log(), 5), server.log()
            assert server.log().count("dropped") == 1, server.log()
        finally:
            for sock in socks:
                sock.close()


def test_a_flood_drops_only_the_member_that_does_not_read(model):
    # 16 MiB: 64 times --max-output, far past what the kernel buffers besides.
    flood_the_room(model, flood(16), Peer)


def test_a_slow_member_that_keeps_reading_is_kept(model):
    # 8 MiB, read at about 3 MB/s: a fixed window, and still the kernel's
    # buffers hide some 4 MB of what it has not read yet.
    flood_the_room(model, flood(8), SlowReader, rcvbuf=65536)
