"""A thread per client: blocking sockets, and the kernel's scheduler as the multiplexer.

The main thread waits for connections and accepts them; every client gets a
thread that blocks in recv() on its own socket.  Nothing asks which socket is
ready: a thread sleeps until its socket is, which is the seed's "multi-thread"
model, paid for in a stack, a kernel task and a context switch per wake-up.

Echo answers only the sender, so the reading thread sends the answer itself;
a blocking sendall() stops it reading while the client does not read, and
TCP flow control pushes back on the client -- the natural backpressure.

Chat is shared state, so the room (the protocol object) sits behind one lock,
the textbook's mutex.  A line fans out to every member, and a blocking send
to a slow member would stall the sender's thread behind someone else's socket.
So a reader only ever sends without blocking (MSG_DONTWAIT) and queues what
the kernel did not take in the member's bounded Outbox; each member has a
writer thread that alone waits on its socket to flush that backlog.  While a
member is behind (servers.protocol.Throttle), every reader that delivers a
line then waits on `room_open` before its next recv, so the senders' bytes
stay in the kernel; the writer of a member that is behind waits for
writability no longer than --max-stall, and drops whoever is overdue.  A
dropped member's socket is shut down, which wakes both of its threads, and
they exit.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import select
import signal
import socket
import threading
import time

from muxbench.net import RECV_SIZE
from servers.limits import refuse
from servers.net import (
    Acceptor,
    at_capacity,
    format_address,
    set_nonblocking,
    tune,
    write_or_queue,
)
from servers.protocol import Outbox, ProtocolError

log = logging.getLogger("muxbench.serve")

# Python's default thread stack is the 8 MiB RLIMIT_STACK: only touched pages
# cost memory, but 1000 clients would reserve 8 GiB of address space (16 GiB
# with writer threads) and make the virtual size meaningless.  A thread here
# runs a short loop of C calls; 256 KiB leaves it ample room.
STACK_SIZE = 256 * 1024
# Time allowed, in total, for every client thread to finish at shutdown.
JOIN_TIMEOUT = 1.0


class Client:
    __slots__ = ("dropped", "left", "outbox", "peer", "reader", "sock", "wakeup", "writer")

    def __init__(self, sock: socket.socket, peer: str, outbox: Outbox,
                 lock: threading.Lock) -> None:
        self.sock = sock
        self.peer = peer
        self.outbox = outbox
        self.wakeup = threading.Condition(lock)  # tells the writer there is work
        self.left = False  # no longer a room member: the writer flushes, then stops
        self.dropped = False  # shut down: both threads stop at once
        self.reader: threading.Thread | None = None
        self.writer: threading.Thread | None = None


class ThreadServer:
    def __init__(self, listener: socket.socket, protocol, options) -> None:
        # Non-blocking, and waited on with poll() beside the wake fd: a
        # blocking accept() would not notice a SIGTERM that lands just before
        # it (servers/shutdown.py), nor survive a reset between poll and accept.
        set_nonblocking(listener)
        self.listener = listener
        self.ready = select.poll()
        self.ready.register(listener, select.POLLIN)
        self.ready.register(options.wake_fd, select.POLLIN)
        self.protocol = protocol
        self.limits = protocol.limits
        # A private protocol (echo) shares nothing between clients: the
        # reading thread sends the answer itself, without the lock.
        self.private = protocol.private
        self.lock = threading.Lock()  # guards the room, every Outbox and `clients`
        self.throttle = protocol.throttle
        # Notified whenever the room may read again: a member caught up or left.
        self.room_open = threading.Condition(self.lock)
        self.clients: set[Client] = set()

    def run(self) -> None:
        previous = threading.stack_size(STACK_SIZE)
        acceptor = Acceptor(self.listener)
        try:
            while True:
                self.ready.poll()
                accepted = acceptor.accept()  # survives EMFILE and aborts
                if accepted is not None and accepted[0] is not None:
                    self.admit(*accepted)
        finally:
            self.stop_all()
            acceptor.close()
            threading.stack_size(previous)

    def admit(self, sock: socket.socket, addr: tuple) -> None:
        peer = format_address(addr)
        with self.lock:
            serving = len(self.clients)
        if at_capacity(self.limits.max_clients, serving, peer):
            sock.close()
            return
        tune(sock)
        client = Client(sock, peer, Outbox(self.limits.max_output), self.lock)
        client.reader = threading.Thread(target=self.serve, args=(client,),
                                         name=f"reader {peer}", daemon=True)
        if not self.private:
            client.writer = threading.Thread(target=self.write_loop, args=(client,),
                                             name=f"writer {peer}", daemon=True)
        with self.lock:
            self.clients.add(client)
            self.protocol.join(client)
        # A process-directed signal goes to any thread that does not block
        # it, but Python runs handlers only in the main thread: SIGTERM taken
        # by a client thread would leave the main thread asleep in accept()
        # and the server deaf.  So client threads block every signal; they
        # inherit the mask at creation (and pass it on to the writer).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            client.reader.start()
        except RuntimeError as exc:  # out of threads (RLIMIT_NPROC, memory)
            with self.lock:
                self.clients.discard(client)
                self.protocol.leave(client)
            refuse("threads", "refused %s: %s", peer, exc)
            sock.close()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def serve(self, client: Client) -> None:
        """The client's own thread: read, hand bytes to the room, until EOF or error."""
        reason = None
        try:
            if client.writer is not None:
                client.writer.start()
            reason = self.read_loop(client)
        except (OSError, RuntimeError) as exc:  # a send error, or no thread for the writer
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        finally:
            with self.lock:
                if reason:
                    self.drop(client, reason)
                elif not client.left:
                    # Half-closed: an unterminated tail is not a line.  Stay
                    # connected until what the room already queued is written.
                    self.leave(client)
                    client.wakeup.notify()
            if client.writer is not None and client.writer.ident is not None:
                client.writer.join()
            with self.lock:
                self.clients.discard(client)
            client.sock.close()

    def read_loop(self, client: Client) -> str | None:
        """Returns why the client must be dropped, or None at a clean end of input."""
        # Each thread receives into its own mapping, not with recv(RECV_SIZE):
        # that is a 64 KiB malloc per call, held while the thread blocks, and
        # glibc serves it from the heap.  Hundreds of threads doing so leave
        # holes the heap keeps after they exit (docs/reliability.md, the soak);
        # a mapping goes back to the kernel whole.
        with mmap.mmap(-1, RECV_SIZE) as buf:
            recv_into, sendall = client.sock.recv_into, client.sock.sendall
            while True:
                try:
                    n = recv_into(buf)
                except OSError as exc:  # ECONNRESET and friends: the peer is gone
                    return exc.strerror
                if not n:
                    return None
                data = buf[:n]  # bytes: the protocol may keep them
                if self.private:
                    # Echo shares nothing between clients, so its threads take
                    # no lock: synchronisation is the price of the shared room,
                    # and only chat pays it.
                    delivery = self.protocol.receive(client, data)
                    if delivery is not None:
                        sendall(delivery[1])  # blocks while the client does not read
                    continue
                with self.lock:
                    if client.dropped:  # by another thread, while we were in recv()
                        return None
                    try:
                        delivery = self.protocol.receive(client, data)
                    except ProtocolError as exc:
                        return str(exc)
                    if delivery is not None:
                        self.queue(*delivery)
                    # Held here, not in recv(): the next bytes wait in the
                    # kernel, and TCP pushes back on the sender.
                    while self.throttle.paused and not client.dropped:
                        self.room_open.wait()

    def queue(self, keys: tuple, data: bytes) -> None:
        """Fan a chat delivery out to the members (lock held); never blocks.

        As in the single-threaded models, write directly and queue only what
        the kernel did not take.  Queueing everything for the writers instead
        would let a reader that holds the GIL outrun them and push a client
        that reads as fast as it can past --max-output.
        """
        for member in keys:
            try:
                # MSG_DONTWAIT: a blocking socket, but this thread must never
                # wait on another client's socket.
                queued = write_or_queue(member.sock, member.outbox, data, socket.MSG_DONTWAIT)
            except OSError as exc:
                self.drop(member, exc.strerror)
            except ProtocolError as exc:
                self.drop(member, str(exc))
            else:
                if queued:
                    self.throttle.note(member, len(member.outbox))
                    member.wakeup.notify()

    def write_loop(self, client: Client) -> None:
        """A member's writer: flushes its backlog, the only place a thread waits on output."""
        outbox, throttle = client.outbox, self.throttle
        writable = select.poll()
        writable.register(client.sock, select.POLLOUT)
        while True:
            with self.lock:
                while not outbox and not client.left and not client.dropped:
                    client.wakeup.wait()
                if client.dropped or not outbox:
                    return
                # Send a bounded chunk outside the lock and count it as queued
                # until the kernel took it, so the Outbox measures what this
                # client has not accepted yet, as in the single-threaded models.
                chunk = outbox[:RECV_SIZE]  # a copy: the outbox may grow meanwhile
                # Never wait past the moment a member that is behind (this one,
                # or one that became so meanwhile) may be overdue.
                timeout = throttle.wait_time()
            if not writable.poll((throttle.max_stall if timeout is None else timeout) * 1000):
                with self.lock:
                    self.expire()
                continue
            try:
                sent = client.sock.send(chunk, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as exc:
                with self.lock:
                    self.drop(client, exc.strerror)
                return
            with self.lock:
                outbox.consume(sent)
                if throttle.note(client, len(outbox)):
                    self.room_open.notify_all()

    def expire(self) -> None:
        """Drop the members that held the room for --max-stall seconds (lock held)."""
        for client, reason in self.throttle.overdue():
            self.drop(client, reason)

    def leave(self, client: Client) -> None:
        """client is no longer a member (lock held); the room may read again."""
        self.protocol.leave(client)
        client.left = True
        self.room_open.notify_all()

    def drop(self, client: Client, reason: str | None) -> None:
        """Disconnect a client from any thread (lock held); its own threads clean up."""
        if client.dropped:
            return
        client.dropped = True
        if not client.left:
            self.leave(client)  # which also wakes its reader, if it waits for the room
        if reason:
            log.info("dropped %s: %s", client.peer, reason)
        # shutdown() rather than close(): it wakes a recv() or sendall() blocked
        # on this socket in another thread, and the descriptor stays valid
        # (not reusable by a new connection) until the reader closes it.
        with contextlib.suppress(OSError):
            client.sock.shutdown(socket.SHUT_RDWR)
        client.wakeup.notify()

    def stop_all(self) -> None:
        with self.lock:
            clients = list(self.clients)
            for client in clients:
                self.drop(client, None)
        deadline = time.monotonic() + JOIN_TIMEOUT
        for client in clients:
            for thread in (client.reader, client.writer):
                if thread is not None and thread.ident is not None:
                    thread.join(max(0.0, deadline - time.monotonic()))
