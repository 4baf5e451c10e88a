"""The two protocols every model serves, as sans-io state: bytes in, deliveries out.

Nothing here touches a socket.  A server hands `receive()` the bytes one client
sent and gets back who must be sent what; it keeps what the kernel would not
take in an `Outbox`.  Because the rules live here once, every model answers
byte-for-byte the same, and the rules are tested exhaustively without a network.

Keys are whatever hashable the server uses to tell its clients apart (an fd, a
connection object, a child's pipe): the core never looks inside them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

MiB = 1024 * 1024


class ProtocolError(Exception):
    """The client broke a rule; the server disconnects it and logs the message."""


class LineTooLong(ProtocolError):
    pass


class OutputLimitExceeded(ProtocolError):
    pass


@dataclass(frozen=True)
class Limits:
    """Per-server limits, the same in every model (--max-line, --max-output, --max-clients)."""

    max_line: int = 64 * 1024
    max_output: int = MiB
    max_clients: int | None = None


Delivery = tuple[tuple[Hashable, ...], bytes]


class Echo:
    """RFC 862 TCP echo: every byte back to its sender, in order, unframed."""

    name = "echo"
    # Each answer depends only on its client's own bytes and goes only to it:
    # a server may serve the client on its own, with no shared room (the
    # thread model takes no lock, the fork model's child needs no IPC).
    private = True
    # Echo output is the client's own input, so a client that does not read is
    # paused, not dropped: the server stops reading it while its backlog exists
    # and TCP flow control pushes back on the sender.  That bounds the backlog
    # to one receive's worth, well under the output limit.
    pause_reading_while_backlogged = True

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits

    def join(self, key: Hashable) -> None:
        pass

    def leave(self, key: Hashable) -> None:
        pass

    def receive(self, key: Hashable, data: bytes) -> Delivery | None:
        return (key,), data


class Chat:
    """One room: every complete line, with its newline, goes to every member.

    The sender is a member too, so it sees its own lines; that is how a client
    knows its line went out, and how the load generator measures delivery.
    Lines are delivered whole and in per-sender order; an unterminated tail
    waits for the rest of its line.  A line is data: no word in it is a command.
    """

    name = "chat"
    private = False
    # A chat client's backlog is filled by the *other* clients, so pausing its
    # reads would not bound it; it is disconnected at the output limit instead.
    pause_reading_while_backlogged = False

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits
        self._partial: dict[Hashable, bytearray] = {}

    @property
    def members(self) -> tuple[Hashable, ...]:
        return tuple(self._partial)

    def join(self, key: Hashable) -> None:
        self._partial[key] = bytearray()

    def leave(self, key: Hashable) -> None:
        # An unterminated tail is not a line: it is never delivered.
        self._partial.pop(key, None)

    def receive(self, key: Hashable, data: bytes) -> Delivery | None:
        partial = self._partial[key]
        max_line = self.limits.max_line
        cut = data.rfind(b"\n") + 1
        if not cut:
            partial += data
            if len(partial) > max_line:
                raise LineTooLong(f"line longer than {max_line} bytes")
            return None
        if partial:
            lines = bytes(partial) + data[:cut]
            partial.clear()
        else:
            lines = data[:cut]
        partial += data[cut:]
        # Only a chunk of complete lines longer than the limit can hold a long
        # line; checking that first keeps the common case to one comparison.
        if len(lines) > max_line + 1 and max(map(len, lines.split(b"\n"))) > max_line:
            raise LineTooLong(f"line longer than {max_line} bytes")
        if len(partial) > max_line:
            raise LineTooLong(f"line longer than {max_line} bytes")
        return tuple(self._partial), lines


PROTOCOLS = {"echo": Echo, "chat": Chat}


class Outbox(bytearray):
    """Bytes queued for one client that the kernel has not taken yet, bounded.

    Like Redis's client output buffer limit: a reader that never reads can
    neither stall the others nor grow the server without bound.  It is a
    bytearray so that the hot path's "anything queued?" stays a C-level check.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def push(self, data: bytes) -> None:
        self.extend(data)
        if len(self) > self.limit:
            raise OutputLimitExceeded(
                f"output backlog {len(self)} bytes passed the {self.limit}-byte limit"
            )

    def consume(self, n: int) -> None:
        # Deleting from the front of a bytearray only moves its start offset.
        del self[:n]
