"""The two protocols every model serves, as sans-io state: bytes in, deliveries out.

Nothing here touches a socket.  A server hands `receive()` the bytes one client
sent and gets back who must be sent what; it keeps what the kernel would not
take in an `Outbox`.  Because the rules live here once, every model answers
byte-for-byte the same, and the rules are tested exhaustively without a network.

Keys are whatever hashable the server uses to tell its clients apart (an fd, a
connection object, a child's pipe): the core never looks inside them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
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
    """Per-server limits, the same in every model
    (--max-line, --max-output, --max-stall, --max-clients)."""

    max_line: int = 64 * 1024
    max_output: int = MiB
    max_stall: float = 2.0  # seconds: see Throttle
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
    throttle = None  # nothing is shared, so nothing room-wide to hold back

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
    # own reads would not bound it: the whole room is held back instead (Throttle).
    pause_reading_while_backlogged = False

    def __init__(self, limits: Limits = Limits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.throttle = Throttle(limits, clock)
        self._partial: dict[Hashable, bytearray] = {}

    @property
    def members(self) -> tuple[Hashable, ...]:
        return tuple(self._partial)

    def join(self, key: Hashable) -> None:
        self._partial[key] = bytearray()

    def leave(self, key: Hashable) -> None:
        # An unterminated tail is not a line: it is never delivered.  A member
        # that left gets nothing more, so its backlog holds nobody back.
        self._partial.pop(key, None)
        self.throttle.forget(key)

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


class Throttle:
    """When a chat room stops reading, and whom it drops: the slow-reader rule.

    Every line goes to every member, so a member that reads more slowly than
    the room talks falls behind however fast the others are.  Dropping every
    member whose backlog passes --max-output (the textbook's answer) drops a
    member that reads steadily but a little more slowly than a flood -- a
    reader that the server itself starved of CPU for a moment, or whose relay
    did.  The rule here is Redis's client-output-buffer-limit (a hard limit,
    and a soft one held for too long) and IRC's sendq, with TCP doing the rest:

    - A member whose backlog passes the high water mark (half --max-output)
      is *behind*, until its backlog is back down to the low water mark (a
      quarter).  While any member is behind, the room reads nobody: the
      senders' bytes wait in the kernel, and TCP flow control slows them at
      their source.  The flood goes no faster than its slowest reader.
    - A member that is behind and takes nothing for --max-stall seconds is
      dropped (`overdue`): that is the member that does not read, and it
      cannot hold the room for longer.  A slow member that keeps reading
      keeps making progress, so it stays, however slow.
    - --max-output is still the hard limit (`Outbox`): the lines a server
      read before the room paused can push a backlog past it.

    Sans-io like the rest of this module: models report each member's
    backlog after they wrote to it or queued for it (`note`), and ask whether
    the room reads (`paused`) and whom to drop (`overdue`, `wait_time`).  The
    clock is injected so that the rule is tested without waiting.
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.high = limits.max_output // 2
        self.low = limits.max_output // 4
        self.max_stall = limits.max_stall
        self.clock = clock
        # Members that are behind -> [backlog last noted, when they must next
        # have taken something].  Empty in the common case: every check below
        # starts with it.
        self.behind: dict[Hashable, list] = {}

    @property
    def paused(self) -> bool:
        """True while the room must read nobody."""
        return bool(self.behind)

    def note(self, key: Hashable, backlog: int) -> bool:
        """Record a member's backlog; True when that paused or resumed the room."""
        state = self.behind.get(key)
        if state is None:
            if backlog <= self.high:
                return False
            self.behind[key] = [backlog, self.clock() + self.max_stall]
            return len(self.behind) == 1
        if backlog <= self.low:
            return self.forget(key)
        if backlog < state[0]:  # it took something: progress, the clock restarts
            state[1] = self.clock() + self.max_stall
        state[0] = backlog
        return False

    def forget(self, key: Hashable) -> bool:
        """The member left or was dropped; True when that resumed the room."""
        return self.behind.pop(key, None) is not None and not self.behind

    def overdue(self) -> list[tuple[Hashable, str]]:
        """The members that are behind and took nothing for --max-stall seconds,
        each with the reason to log as it is dropped."""
        now = self.clock()
        return [(key, f"output backlog {backlog} bytes, past {self.high}, "
                      f"and nothing taken for {self.max_stall:g} s")
                for key, (backlog, due) in self.behind.items() if due <= now]

    def wait_time(self) -> float | None:
        """Seconds until the next member may become overdue; None when none is behind."""
        if not self.behind:
            return None
        return max(0.0, min(due for _, due in self.behind.values()) - self.clock())


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
