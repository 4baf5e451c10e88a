"""Chat workload: every client in one room, every line checked at every receiver.

Before reporting ready, each client sends a join line (seq 0) and waits for
it to come back: then the server has surely accepted it, so once every worker
is ready every client is a member and will be sent every later line.  Join
lines are not counted.  From t0 each client sends lines -- at `rate/clients`
lines/s, or closed loop: its next line once its own came back -- and every
receiver checks each line (CRC, padding), tracks per sender the next seq it
expects, and records the delivery latency of lines sent inside the window.

After the window the workers tell the parent how many lines their clients
sent; the parent sends back the total, and each worker drains until every
one of its live clients has had every line (or the drain time is up), so
nothing still in flight is mistaken for lost.
"""

from __future__ import annotations

import heapq
import socket
import time

from loadgen.integrity import SenderTrack, chat_line, parse_chat_line
from loadgen.schedule import Arrivals, Lag
from loadgen.timer import Timer, sleep_until
from loadgen.worker import IN, OUT, Go, Phases, Worker
from muxbench.net import RECV_SIZE


class ChatConn:
    __slots__ = ("alive", "arrivals", "buf", "cid", "distinct", "fd", "out", "seq", "sock",
                 "tracks")

    def __init__(self, cid: int, sock: socket.socket) -> None:
        self.cid, self.sock, self.fd = cid, sock, sock.fileno()
        self.alive = True
        self.buf = b""
        self.out = b""
        self.seq = 0           # the next line this client sends
        self.distinct = 0      # lines (seq >= 1, any sender) received at least once
        self.tracks: dict[int, SenderTrack] = {}
        self.arrivals: Arrivals | None = None


class ChatWorker(Worker):
    def prepare(self, socks: dict[int, socket.socket]) -> dict[int, socket.socket]:
        self.conns = {}
        for cid, sock in socks.items():
            c = ChatConn(cid, sock)
            self.conns[c.fd] = c
            self.ep.register(c.fd, IN)
            self.send_line(c, time.perf_counter_ns())
        joined: set[int] = set()
        deadline = time.monotonic() + self.plan.connect_timeout
        while len(joined) < len(self.conns) and time.monotonic() < deadline:
            for fd, ev in self.ep.poll(max(0.0, deadline - time.monotonic())):
                c = self.conns.get(fd)
                if c is not None:
                    for line in self.lines(c, ev):
                        fields = parse_chat_line(line, self.plan.size)
                        if fields is not None and fields[:2] == (c.cid, 0):
                            joined.add(c.fd)
        for c in list(self.conns.values()):
            if c.fd not in joined:
                self.drop(c, "join line not echoed")
        return {c.cid: c.sock for c in self.conns.values()}

    def adopt(self, socks: dict[int, socket.socket]) -> None:
        self.all = list(self.conns.values())
        self.lag = Lag()
        self.total: int | None = None

    def send_line(self, c: ChatConn, now: int) -> None:
        line = chat_line(c.cid, c.seq, now, self.plan.size)
        c.seq += 1
        if self.window_start <= now < self.window_end:
            self.tally.sent += 1
        self.write(c, line)

    def lines(self, c: ChatConn, ev: int) -> list[bytes]:
        """Complete lines now readable on c (without newlines); [] on error or EOF."""
        if ev & OUT:
            self.flush(c)
        try:
            data = c.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return []
        except OSError as exc:
            self.drop(c, exc)
            return []
        if not data:
            self.drop(c, "EOF")
            return []
        lines = (c.buf + data).split(b"\n")
        c.buf = lines.pop()
        return lines

    def stop_sending(self) -> None:
        self.chan.send(("sent", sum(max(0, c.seq - 1) for c in self.all)))

    def told(self, kind: str, value: object) -> None:
        if kind == "total":
            self.total = value
        else:
            super().told(kind, value)

    def drained(self) -> bool:
        return self.total is not None and all(
            c.distinct >= self.total for c in self.all if c.alive)

    def run(self, go: Go) -> None:
        plan, window = self.plan, go.window
        self.window_start, self.window_end = ws, we = window
        clock = time.perf_counter_ns
        size, tally, record = plan.size, self.tally, self.latency.append
        closed = plan.rate is None
        heap: list[tuple[int, int]] = []
        timer = None if closed else Timer()
        sleep_until(go.t0)
        for c in self.all:
            if closed:
                self.send_line(c, clock())
            else:
                c.arrivals = Arrivals(c.cid, plan.clients, plan.rate, plan.arrival, plan.seed,
                                      go.t0)
                heap.append((c.arrivals.due, c.fd))
        heapq.heapify(heap)
        if timer is not None:
            self.ep.register(timer.fd, IN)
        phases = Phases(self, window, plan.drain_s)
        chan_fd = self.chan.fileno()
        while phases.advance(now := clock()):
            if not phases.sending:
                heap.clear()
                if self.drained():
                    break
            while heap and heap[0][0] <= now:
                due, fd = heapq.heappop(heap)
                c = self.conns.get(fd)
                if c is not None:
                    if ws <= due < we:
                        self.lag.note(now - due, True)
                    self.send_line(c, now)
                    heapq.heappush(heap, (c.arrivals.advance(), fd))
            if heap:
                timer.arm(heap[0][0])
            for fd, ev in self.ep.poll(phases.timeout(now)):
                c = self.conns.get(fd)
                if c is None:
                    if fd == chan_fd:
                        self.hear(phases)
                        we = self.window_end
                    elif timer is not None and fd == timer.fd:
                        timer.clear()
                    continue
                lines = self.lines(c, ev)
                t = clock()
                tracks = c.tracks
                for line in lines:
                    fields = parse_chat_line(line, size)
                    if fields is None:
                        tally.corrupted += 1
                        continue
                    sender, seq, sent_ns = fields
                    if not seq:
                        continue  # a join line
                    track = tracks.get(sender)
                    if track is None:
                        track = tracks[sender] = SenderTrack(first=1)
                    verdict = track.accept(seq)
                    if verdict == "dup":
                        tally.duplicated += 1
                        continue
                    c.distinct += 1
                    if ws <= sent_ns < we:
                        tally.received += 1
                        record(t - sent_ns)
                        if verdict == "late":
                            tally.reordered += 1
                    if closed and sender == c.cid and phases.sending:
                        self.send_line(c, t)
        if timer is not None:
            timer.close()
        for c in self.all:
            if c.alive:
                c.sock.close()

    def extra(self) -> dict:
        return self.lag.as_result() if self.plan.rate is not None else {}
