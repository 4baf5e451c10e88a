"""What every message carries so that loss, damage, duplication and reordering are counted.

Echo: message `seq` of connection `cid` is a 16-byte header (seq, seq ^ key(cid))
followed by a body drawn once per connection from a seeded generator.  The
hot path compares what came back with the frame it expects next -- one
memcmp -- and only a mismatch takes the slow path below, which works out
whether the frame is a later message (the ones before it were skipped), a
skipped one arriving late (reordered), one seen before (duplicated), or
bytes that are no frame of this connection at all (corrupted).

Chat: a line is `SENDER SEQ SEND_NS CRC PADDING\\n`, padded to the message
size, where CRC is the CRC-32 of `SENDER SEQ SEND_NS` and the padding a fixed
pattern, so a flipped digit or a cut line cannot pass for a valid line.
SEND_NS is CLOCK_MONOTONIC, shared by every process on the machine, so a
receiver in any worker computes the delivery latency directly.

Accounting identities (the tests hold the generator to them exactly):
echo  `sent == received + corrupted + lost`, counted over the window's messages;
chat  `expected_deliveries == deliveries + corrupted + lost`.
Reordered messages are part of `received`; duplicates are extra copies, counted apart.
"""

from __future__ import annotations

import functools
import random
import struct
import zlib
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

HEADER = struct.Struct("<QQ")       # seq, seq XOR the connection's key
ECHO_MIN_SIZE = HEADER.size
# CPython stores ints in 30-bit digits: with a key below 2**30, seq ^ key stays
# a one-digit int for the first 2**30 messages of a connection, and the XOR
# and the packing of such an int cost a fraction of a 64-bit one's.
_KEY_MASK = (1 << 30) - 1
CHAT_MIN_SIZE = 64

_PAD = b"abcdefghijklmnopqrstuvwxyz0123456789" * 1820  # > 64 KiB


class Unsolicited(Exception):
    """The server sent bytes that answer no message (counted as an error, not a message)."""


class Tally:
    """Message counters of one worker; merged by summing."""

    __slots__ = ("corrupted", "duplicated", "lost", "received", "reordered", "sent")

    def __init__(self) -> None:
        self.sent = self.received = self.lost = 0
        self.corrupted = self.duplicated = self.reordered = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


# An echo message in flight is a plain tuple (cheaper to build than a class on
# the hot path): (seq, frame, due_ns, sent_ns, counted) -- when it was due, when
# it went out, and whether it is one of the window's messages, decided once as
# it goes out so that what becomes of it is counted against the same window.
SEQ, FRAME, DUE, SENT, COUNTED = range(5)
Pending = tuple[int, bytes, int, int, bool]


class Window(NamedTuple):
    start: int
    end: int


def connection_key(cid: int) -> int:
    """A 30-bit key per connection (golden-ratio hashing spreads nearby ids apart;
    an odd multiplier keeps distinct ids below 2**30 on distinct keys)."""
    return ((cid + 1) * 0x9E3779B1) & _KEY_MASK


@functools.cache
def frame_packer(size: int) -> Callable[[int, int, bytes], bytes]:
    """pack(seq, seq ^ key, body): a whole `size`-byte frame in one call.

    Header and body packed together save building the header apart and
    concatenating: the generator's hot loop does this once per message.
    """
    return struct.Struct(f"<QQ{size - HEADER.size}s").pack


class Pattern:
    """The deterministic frames of one echo connection."""

    __slots__ = ("body", "cid", "key", "pack")

    def __init__(self, cid: int, size: int, seed: int) -> None:
        self.cid = cid
        # The header repeats seq XOR this key: one damaged byte in either copy
        # makes them disagree, so a damaged header is a damaged frame, never
        # another valid message; and another connection's frames never pass.
        self.key = connection_key(cid)
        self.body = random.Random(seed * 1_000_003 + cid).randbytes(size - HEADER.size)
        self.pack = frame_packer(size)

    def frame(self, seq: int) -> bytes:
        return self.pack(seq, seq ^ self.key, self.body)

    def seq_of(self, data: bytes) -> int | None:
        """The seq when `data` is exactly one of this connection's frames, else None."""
        if len(data) < HEADER.size:
            return None
        seq, check = HEADER.unpack_from(data)
        if check != seq ^ self.key or data[HEADER.size:] != self.body:
            return None
        return seq


def settle_mismatch(data: bytes, pattern: Pattern, inflight: deque, missing: dict,
                    tally: Tally) -> Pending | None:
    """Account for a frame that is not the next expected one.

    Returns the message to record as intact (a later message or a late one),
    or None when the frame is damaged or a duplicate.  Counters only move for
    the window's messages, like `sent`.
    """
    seq = pattern.seq_of(data)
    if seq is None:
        # No frame of ours: the oldest outstanding message came back damaged.
        if not inflight:
            raise Unsolicited("bytes received with no message outstanding")
        if inflight.popleft()[COUNTED]:
            tally.corrupted += 1
        return None
    if inflight and inflight[0][SEQ] < seq <= inflight[-1][SEQ]:
        while inflight[0][SEQ] < seq:
            skipped = inflight.popleft()
            missing[skipped[SEQ]] = skipped
        return inflight.popleft()
    entry = missing.pop(seq, None)
    if entry is not None:
        if entry[COUNTED]:
            tally.reordered += 1
        return entry
    tally.duplicated += 1
    return None


def count_unanswered(inflight: deque, missing: dict) -> int:
    """Window messages that never came back: still in flight, or skipped and never seen."""
    return sum(entry[COUNTED] for entry in (*inflight, *missing.values()))


def chat_line(sender: int, seq: int, send_ns: int, size: int) -> bytes:
    head = b"%d %d %d" % (sender, seq, send_ns)
    start = b"%s %08x " % (head, zlib.crc32(head))
    return start + _PAD[: max(0, size - 1 - len(start))] + b"\n"


def parse_chat_line(line: bytes, size: int) -> tuple[int, int, int] | None:
    """(sender, seq, send_ns) of an intact line (without its newline), or None."""
    parts = line.split(b" ", 4)
    if len(parts) != 5:
        return None
    sender, seq, send_ns, crc, pad = parts
    head_len = len(sender) + len(seq) + len(send_ns) + 2
    # Compared as bytes, not parsed: int() would accept "DE64", " 12" or "1_2".
    if crc != b"%08x" % zlib.crc32(line[:head_len]):
        return None
    if pad != _PAD[: max(0, size - 1 - (head_len + 10))]:
        return None
    try:
        fields = int(sender), int(seq), int(send_ns)
    except ValueError:
        return None
    return fields


class SenderTrack:
    """One receiver's view of one sender: the next seq it expects and the gaps it saw."""

    __slots__ = ("missing", "next")

    def __init__(self, first: int = 0) -> None:
        self.next = first
        self.missing: set[int] = set()

    def accept(self, seq: int) -> str:
        """'new' for a first delivery in order or after a gap, 'late' for a gap
        filled (reordered), 'dup' for a line already delivered."""
        if seq >= self.next:
            if seq > self.next:
                self.missing.update(range(self.next, seq))
            self.next = seq + 1
            return "new"
        if seq in self.missing:
            self.missing.discard(seq)
            return "late"
        return "dup"
