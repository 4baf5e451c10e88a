"""Echo workloads: closed loop, open loop, sparse (few active among many idle), idle.

Closed loop: each active connection keeps `depth` messages in flight; the
latency is the round trip.  Open loop: message k of a connection is due at
t0 + k/rate (or after exponential gaps, for Poisson arrivals) and goes out
then -- or, when the connection already has `depth` messages outstanding, as
soon as a reply frees a slot, as wrk2 does.  Response time is measured from
the due time, so a stalled server shows in it in full (no coordinated
omission); service time is measured from the actual send.  Lateness caused by
the generator itself (the connection was free but the loop was late) is kept
apart from lateness caused by waiting for the server: the former makes a run
invalid, the latter is what is being measured.

Each has a loop of its own, `run_closed` and `run_open`, with the per-message
work written in line: there a function call costs more than the rest of the
loop.  What is done once per run is shared.
"""

from __future__ import annotations

import heapq
import os
import socket
import time
from array import array
from collections import deque

from loadgen.integrity import (
    COUNTED,
    DUE,
    FRAME,
    SENT,
    Pattern,
    Unsolicited,
    count_unanswered,
    frame_packer,
    settle_mismatch,
)
from loadgen.schedule import Arrivals, Lag
from loadgen.timer import Timer, sleep_until
from loadgen.worker import IN, OUT, Go, Phases, Worker
from muxbench.net import RECV_SIZE

PROBE = b"\x00"  # see EchoWorker.prepare


class EchoConn:
    __slots__ = ("alive", "arrivals", "body", "buf", "cid", "fd", "inflight", "key",
                 "missing", "out", "pattern", "recv", "send", "seq", "sock", "waiting")

    def __init__(self, cid: int, sock: socket.socket, pattern: Pattern) -> None:
        self.cid, self.sock, self.fd, self.pattern = cid, sock, sock.fileno(), pattern
        # Looked up once: these are used for every message.
        self.body, self.key, self.recv, self.send = pattern.body, pattern.key, sock.recv, sock.send
        self.alive = True
        self.buf = b""
        self.out = b""
        self.seq = 0
        self.inflight: deque = deque()
        self.missing: dict = {}
        self.waiting: int | None = None  # open loop: due time of a send held back by depth
        self.arrivals: Arrivals | None = None


class EchoWorker(Worker):
    def prepare(self, socks: dict[int, socket.socket]) -> dict[int, socket.socket]:
        """One byte there and back on every connection before reporting ready.

        connect() returns once the kernel has queued the connection, before
        the server has accepted it -- a process-per-client server may still be
        forking hundreds of children.  Without the probe that start-up would
        land inside the window and count as idle or per-message cost.
        """
        waiting = {sock.fileno(): (cid, sock) for cid, sock in socks.items()}
        for fd, (_, sock) in waiting.items():
            sock.send(PROBE)
            self.ep.register(fd, IN)
        # A server that forks per client answers the probes one by one, a few
        # milliseconds apart: give up only when no answer came for a whole
        # connect timeout, not when the first thousand take longer than one.
        deadline = time.monotonic() + self.plan.connect_timeout
        while waiting and time.monotonic() < deadline:
            for fd, _ in self.ep.poll(max(0.0, deadline - time.monotonic())):
                deadline = time.monotonic() + self.plan.connect_timeout
                cid, sock = waiting.pop(fd)
                self.ep.unregister(fd)
                try:
                    echoed = sock.recv(len(PROBE))
                except OSError as exc:
                    echoed, why = b"", exc
                else:
                    # Closed unanswered: how a server at its limit refuses.
                    why = "probe not echoed" if echoed else "closed before the probe's answer"
                if echoed != PROBE:  # a 1-byte probe arrives whole or not at all
                    self.fail(why)
                    sock.close()
                    del socks[cid]
        for fd, (cid, sock) in waiting.items():
            self.ep.unregister(fd)
            self.fail("probe not echoed")
            sock.close()
            del socks[cid]
        return socks

    def adopt(self, socks: dict[int, socket.socket]) -> None:
        plan = self.plan
        everyone_active = plan.workload == "echo"
        active = {cid for cid in socks if everyone_active or cid in plan.active}
        self.active = [EchoConn(cid, socks[cid], Pattern(cid, plan.size, plan.seed))
                       for cid in sorted(active)]
        self.conns = {c.fd: c for c in self.active}
        for c in self.active:
            self.ep.register(c.fd, IN)
        # An idle connection is kept as its bare descriptor, watched only for
        # the server closing it: no object, no buffer, nothing per connection
        # here but what the kernel keeps (docs/c100k.md has the measure).
        self.idle = array("i", [socks[cid].detach() for cid in socks if cid not in active])
        for fd in self.idle:
            self.ep.register(fd, IN)
        self.open_loop = plan.rate is not None and plan.workload == "echo"
        self.lag = Lag()
        self.heap: list[tuple[int, int]] = []

    # -- open-loop sending -------------------------------------------------------
    def send(self, c: EchoConn, due: int, now: int) -> None:
        """One message due at `due` (the closed loop sends in line, in run_closed())."""
        seq = c.seq
        c.seq = seq + 1
        frame = c.pattern.frame(seq)
        counted = self.window_start <= due < self.window_end
        c.inflight.append((seq, frame, due, now, counted))
        if counted:
            self.tally.sent += 1
        self.write(c, frame)

    def schedule_first(self, t0: int) -> None:
        plan = self.plan
        for c in self.active:
            c.arrivals = Arrivals(c.cid, plan.clients, plan.rate, plan.arrival, plan.seed, t0)
            heapq.heappush(self.heap, (c.arrivals.due, c.cid))
        self.by_cid = {c.cid: c for c in self.active}

    def send_due(self, c: EchoConn, due: int, now: int, free: bool) -> None:
        """Send the message due at `due`; schedule the connection's next one."""
        if self.window_start <= due < self.window_end:
            self.lag.note(now - due, free)
        self.send(c, due, now)
        nxt = c.arrivals.advance()
        if nxt < self.window_end:
            heapq.heappush(self.heap, (nxt, c.cid))

    def stop_sending(self) -> None:
        """Open loop: drop what a window cut short (Ctrl-C) no longer holds."""
        window_end = self.window_end
        self.heap[:] = [item for item in self.heap if item[0] < window_end]
        heapq.heapify(self.heap)
        for c in self.active:
            if c.waiting is not None and c.waiting >= window_end:
                c.waiting = None

    def fire(self, now: int) -> None:
        """Send every message due by `now`, or hold it back on a connection at depth."""
        heap, depth = self.heap, self.plan.depth
        while heap and heap[0][0] <= now:
            due, cid = heapq.heappop(heap)
            c = self.by_cid[cid]
            if not c.alive:
                continue
            if len(c.inflight) >= depth:
                c.waiting = due
            else:
                self.send_due(c, due, now, free=True)

    def release(self, c: EchoConn) -> None:
        """Open loop: a reply freed a slot; send the message held back for it, if any."""
        if c.waiting is not None and len(c.inflight) < self.plan.depth:
            due, c.waiting = c.waiting, None
            self.send_due(c, due, time.perf_counter_ns(), free=False)

    # -- receiving --------------------------------------------------------------
    def idle_event(self, fd: int) -> None:
        """An idle connection became readable: the server closed it, or sent
        what nobody asked for.  Either way it is counted and closed."""
        try:
            why = "unsolicited data" if os.read(fd, RECV_SIZE) else "EOF"
        except BlockingIOError:
            return
        except OSError as exc:
            why = exc
        self.fail(why)
        self.ep.unregister(fd)
        os.close(fd)

    def receive_unusual(self, c: EchoConn, data: bytes, seen: int) -> int:
        """Data that is not exactly the next frame: part of one, several, or a mismatch.

        Records each window message it answers, as the loops do in line for
        the usual case, and returns how many there were.
        """
        size, inflight = self.plan.size, c.inflight
        buf = c.buf + data
        whole = len(buf) - len(buf) % size
        c.buf = buf[whole:]
        received = 0
        for i in range(0, whole, size):
            frame = buf[i:i + size]
            if inflight and frame == inflight[0][FRAME]:
                entry = inflight.popleft()
            else:
                try:
                    entry = settle_mismatch(frame, c.pattern, inflight, c.missing, self.tally)
                except Unsolicited:
                    self.fail("unsolicited data")
                    continue
            if entry is not None and entry[COUNTED]:
                received += 1
                self.latency.append(seen - entry[DUE])
                if self.open_loop:
                    self.service.append(seen - entry[SENT])
        return received

    # -- the loops --------------------------------------------------------------
    def run(self, go: Go) -> None:
        """The closed or the open loop until the drain ends, then the run's accounting."""
        self.window_start, self.window_end = go.window
        if self.open_loop:
            received, sent = self.run_open(go)
        else:
            received, sent = self.run_closed(go)
        self.account(received, sent)

    def begin(self, go: Go) -> Phases:
        """The marks the loop passes from now on, the first of them checked now."""
        phases = Phases(self, go.window, self.plan.drain_s)
        phases.advance(time.perf_counter_ns())
        return phases

    def run_closed(self, go: Go) -> tuple[int, int]:
        """Keep `depth` messages in flight on every active connection until the drain
        ends; (received, sent) of the window, not yet in the tally."""
        sleep_until(go.t0)
        # Connections with a free slot, refilled once the round of replies is
        # read -- at first, every one.
        refills = list(self.active)
        events: list[tuple[int, int]] = []
        conns, poll, clock = self.conns, self.ep.poll, time.perf_counter_ns
        size, depth = self.plan.size, self.plan.depth
        record_latency = self.latency.append
        pack = frame_packer(size)
        bufsize = min(RECV_SIZE, size * depth)
        chan_fd = self.chan.fileno()
        # The in-flight tuple's slots, as locals: as cheap to index by as literals.
        frame_slot, due_slot, counted_slot = FRAME, DUE, COUNTED
        received = sent = 0  # locals on the hot path; added to the tally at the end
        seen = 0  # when epoll_wait last returned: see below
        sending = True
        phases = self.begin(go)
        # Whether what goes out now is one of the window's messages -- the
        # loop's view, which changes as it passes the marks.
        counted = phases.inside
        while True:
            for fd, ev in events:
                c = conns.get(fd)
                if c is None:
                    if fd == chan_fd:
                        self.hear(phases)
                    else:
                        self.idle_event(fd)
                    continue
                if ev & OUT:
                    self.flush(c)
                try:
                    data = c.recv(bufsize)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self.drop(c, exc)
                    continue
                if not data:
                    self.drop(c, "EOF")
                    continue
                inflight = c.inflight
                if not c.buf and inflight and data == inflight[0][frame_slot]:
                    # The usual case: exactly the next frame, intact, which
                    # frees a slot of this (active) connection.
                    entry = inflight.popleft()
                    if entry[counted_slot]:
                        received += 1
                        record_latency(seen - entry[due_slot])
                else:
                    received += self.receive_unusual(c, data, seen)
                    if len(inflight) >= depth:
                        continue
                if sending:
                    refills.append(c)
            # The round's next messages go out back to back, after its replies
            # are read: the server, woken by the first, finds the others
            # already there instead of sleeping again between them (about a
            # tenth more round trips a second against the C server).  Each is
            # stamped as it goes, so the wait is not counted as latency.
            for c in refills:
                inflight = c.inflight
                while len(inflight) < depth:
                    now = clock()
                    seq = c.seq
                    c.seq = seq + 1
                    frame = pack(seq, seq ^ c.key, c.body)
                    inflight.append((seq, frame, now, now, counted))  # as integrity.Pending
                    if counted:
                        sent += 1
                    if c.out:
                        c.out += frame
                        continue
                    try:
                        taken = c.send(frame)
                    except BlockingIOError:
                        taken = 0
                    except OSError as exc:
                        self.drop(c, exc)
                        break
                    if taken != size:
                        c.out = frame[taken:]
                        self.ep.modify(c.fd, IN | OUT)
            refills.clear()
            now = clock()
            if now >= phases.next:
                if not phases.advance(now):
                    break
                sending = phases.sending
                counted = phases.inside
            if not phases.sending and not any(c.inflight for c in self.active if c.alive):
                break
            events = poll(phases.timeout(now))
            # Replies are stamped when epoll_wait reports them: each was in
            # its socket by then, and the time this loop then spends reading
            # the ones before it is the generator's, not the server's.
            seen = clock()
        return received, sent

    def run_open(self, go: Go) -> tuple[int, int]:
        """Send on the schedule until the drain ends; (received, 0) of the window: its
        sends are in the tally already."""
        timer = Timer()
        sleep_until(go.t0)
        self.schedule_first(go.t0)
        self.ep.register(timer.fd, IN)
        events: list[tuple[int, int]] = []
        conns, poll, clock = self.conns, self.ep.poll, time.perf_counter_ns
        size, depth = self.plan.size, self.plan.depth
        record_latency, record_service = self.latency.append, self.service.append
        bufsize = min(RECV_SIZE, size * depth)
        chan_fd, timer_fd = self.chan.fileno(), timer.fd
        heap = self.heap
        armed = 0  # the due time the timer is set for; 0 once it has fired
        # The in-flight tuple's slots, as locals: as cheap to index by as literals.
        frame_slot, due_slot, sent_slot, counted_slot = FRAME, DUE, SENT, COUNTED
        received = 0  # a local on the hot path; added to the tally at the end
        seen = 0  # when epoll_wait last returned, as in run_closed
        phases = self.begin(go)
        while True:
            for fd, ev in events:
                c = conns.get(fd)
                if c is None:
                    if fd == chan_fd:
                        self.hear(phases)
                    elif fd == timer_fd:
                        timer.clear()
                        armed = 0
                    else:
                        self.idle_event(fd)
                    continue
                if ev & OUT:
                    self.flush(c)
                try:
                    data = c.recv(bufsize)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    self.drop(c, exc)
                    continue
                if not data:
                    self.drop(c, "EOF")
                    continue
                inflight = c.inflight
                if not c.buf and inflight and data == inflight[0][frame_slot]:
                    entry = inflight.popleft()
                    if entry[counted_slot]:
                        received += 1
                        record_latency(seen - entry[due_slot])
                        record_service(seen - entry[sent_slot])
                else:
                    received += self.receive_unusual(c, data, seen)
                    if len(inflight) >= depth:
                        continue
                self.release(c)
            now = clock()
            if now >= phases.next and not phases.advance(now):
                break
            # What was due inside the window still goes out while the loop
            # drains: a held-back message is exactly what response time is about.
            if not phases.sending and not heap and not any(
                    c.inflight or c.waiting is not None for c in self.active if c.alive):
                break
            if heap:
                if heap[0][0] <= now:
                    self.fire(now)
                if heap and heap[0][0] != armed:
                    armed = heap[0][0]
                    timer.arm(armed)
            events = poll(phases.timeout(now))
            seen = clock()
        timer.close()
        return received, 0

    def account(self, received: int, sent: int) -> None:
        """After the drain: the loop's counts into the tally; what never went out or
        came back, counted; the sockets closed."""
        tally = self.tally
        tally.received += received
        tally.sent += sent
        unsent = sum(self.by_cid[cid].alive for _, cid in self.heap) + sum(
            c.waiting is not None for c in self.active if c.alive)
        if unsent:
            self.errors["unsent at drain end"] += unsent
        for c in self.active:
            tally.lost += count_unanswered(c.inflight, c.missing)
            if c.alive:
                # Lost as far as this run can tell, but perhaps only slow: say so.
                late = count_unanswered(c.inflight, {})
                if late:
                    self.errors["no reply by drain end"] += late
                c.sock.close()

    def extra(self) -> dict:
        lag = self.lag.as_result() if self.open_loop else {}
        return {"active_connected": len(self.active), **lag}
