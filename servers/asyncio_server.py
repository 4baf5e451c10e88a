"""asyncio and uvloop: the event loops people actually pick, as the yardstick.

An asyncio.Protocol is the epoll model turned inside out: the loop (epoll
through `selectors` for asyncio, libuv for uvloop) learns that a socket is
ready, and its transport calls the protocol back -- data_received(),
eof_received(), connection_lost().  Protocols rather than streams: a stream
adds a coroutine switch and a buffer copy per message, which would measure
asyncio's conveniences instead of its loop.  Buffered protocols, in fact:
a plain Protocol is fed by recv(256 KiB) (asyncio) or a 250 KB buffer
(uvloop), and a receive that size costs several times one of RECV_SIZE in
allocator churn; get_buffer() lets every model read the same amount.  The
same class runs on both loops; only the loop factory differs.

Transports already follow the rule the hand-written models follow: write
directly, buffer what the kernel did not take.  Backpressure is the
flow-control pair pause_writing()/resume_writing(), turned into
pause_reading()/resume_reading(): for echo, on the client itself; for chat,
on every member while one is behind (servers.protocol.Throttle, whose water
marks become each transport's write buffer limits), with a timer that drops
the member that takes nothing for --max-stall seconds.  A chat member whose
write buffer passes --max-output is aborted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
from collections.abc import Callable

from muxbench.limits import raise_nofile
from muxbench.net import RECV_SIZE
from servers import shutdown
from servers.limits import HEADROOM_FDS, refuse
from servers.net import Acceptor, at_capacity, format_address, somaxconn, tune
from servers.protocol import ProtocolError
from servers.shutdown import SIGNALS

log = logging.getLogger("muxbench.serve")

# create_server() calls listen() again, with 100 unless told otherwise.
BACKLOG = min(somaxconn(), 4096)


class Client(asyncio.BufferedProtocol):
    def __init__(self, server: AsyncioServer) -> None:
        self.server = server
        self.buffer = server.buffer
        self.room = server.protocol
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.gone = True  # until admitted; then again once dropped or closing

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername")
        if peername is None:
            # Reset before the loop called us (uvloop then has no peer address):
            # nobody to serve, and an exception here would leave the socket open.
            transport.abort()
            return
        self.peer = format_address(peername)
        clients = self.server.clients
        if at_capacity(self.server.limits.max_clients, len(clients), self.peer):
            transport.close()
            return
        if len(clients) >= self.server.capacity:
            # uvloop sheds past its last descriptor without a word (libuv's
            # reserve descriptor); both loops say it here, a little before.
            refuse("descriptors", "refused %s: %d clients, the most RLIMIT_NOFILE %d leaves "
                   "room for", self.peer, len(clients), self.server.nofile)
            transport.close()
            return
        tune(transport.get_extra_info("socket"))
        self.gone = False
        clients.add(self)
        self.room.join(self)
        throttle = self.room.throttle
        if throttle is not None:
            transport.set_write_buffer_limits(high=throttle.high, low=throttle.low)
            if self.server.paused:
                transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.gone:
            return
        data = bytes(self.buffer[:nbytes])  # the buffer is shared: copy out at once
        try:
            delivery = self.room.receive(self, data)
        except ProtocolError as exc:
            self.drop(str(exc))
            return
        if delivery is not None:
            keys, out = delivery
            for member in keys:
                member.send(out)

    def send(self, data: bytes) -> None:
        if self.gone:  # dropped earlier in this same fan-out
            return
        transport = self.transport
        transport.write(data)
        if self.room.pause_reading_while_backlogged:
            return  # bounded by pause_writing() below, not by dropping
        backlog = transport.get_write_buffer_size()
        limit = self.server.limits.max_output
        if backlog > limit:
            self.drop(f"output backlog {backlog} bytes passed the {limit}-byte limit")

    # The transport calls these when its write buffer crosses the high and
    # then the low water mark.  For echo that means the client is not reading
    # its answers: stop reading its questions, and TCP pushes back on it.
    # For chat, the member is behind, or caught up: the room's throttle decides.
    def pause_writing(self) -> None:
        if not self.room.pause_reading_while_backlogged:
            self.server.note(self)
        elif not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.room.pause_reading_while_backlogged:
            self.server.note(self)
        elif not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        # Half-closed: an unterminated chat tail is not a line.  Returning
        # False has the transport close itself -- after flushing what it
        # still buffers, so echo's last bytes and queued chat lines go out.
        self.leave()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.gone:  # ECONNRESET, EPIPE: the peer is gone
            log.info("dropped %s: %s", self.peer, getattr(exc, "strerror", None) or exc)
        self.gone = True
        self.leave()
        self.server.clients.discard(self)

    def drop(self, reason: str) -> None:
        log.info("dropped %s: %s", self.peer, reason)
        self.gone = True
        self.leave()  # no further deliveries are addressed to it
        self.transport.abort()  # discard its buffer: that is what it could not take

    def leave(self) -> None:
        self.room.leave(self)
        self.server.hold()  # it may have been the member holding the room back


class AsyncioServer:
    @staticmethod
    def new_event_loop() -> asyncio.AbstractEventLoop:
        return asyncio.new_event_loop()

    def __init__(self, listener: socket.socket, protocol, options) -> None:
        self.listener = listener
        self.protocol = protocol
        self.limits = protocol.limits
        self.clients: set[Client] = set()
        # One receive buffer for every connection: the loop is single-threaded
        # and each read is consumed before the next one starts.
        self.buffer = memoryview(bytearray(RECV_SIZE))
        self.acceptor = Acceptor(listener)
        self.nofile = raise_nofile().soft
        self.capacity = self.nofile - HEADROOM_FDS
        self.server: asyncio.AbstractServer | None = None
        self.throttle = protocol.throttle  # None: nothing room-wide (echo)
        self.paused = False  # the room reads nobody: a member is behind
        self.expiry: asyncio.TimerHandle | None = None

    def note(self, client: Client) -> None:
        """A member's write buffer crossed a water mark: tell the room's throttle."""
        self.throttle.note(client, client.transport.get_write_buffer_size())
        self.hold()

    def hold(self) -> None:
        """Pause or resume reading every member as the throttle says; time the stall."""
        throttle = self.throttle
        if throttle is None:
            return
        if throttle.paused != self.paused:
            self.paused = throttle.paused
            for client in self.clients:
                if not client.transport.is_closing():
                    if self.paused:
                        client.transport.pause_reading()
                    else:
                        client.transport.resume_reading()
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        if self.paused:
            self.expiry = asyncio.get_running_loop().call_later(
                throttle.wait_time(), self.expire)

    def expire(self) -> None:
        """Drop the members that held the room for --max-stall seconds.

        A transport reports only the water marks, not each write, so whether
        a member took anything since is read from its buffer's size here.
        """
        self.expiry = None
        for client in list(self.throttle.behind):
            self.throttle.note(client, client.transport.get_write_buffer_size())
        for client, reason in self.throttle.overdue():
            client.drop(reason)
        self.hold()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, close everything, then re-raise the signal.

        The caller's handler raises an exception (cli_serve's Shutdown), but
        raised from inside a loop callback a BaseException other than
        SystemExit or KeyboardInterrupt is caught and logged by asyncio's
        Handle, and the loop keeps running.  So while the loop runs, the loop
        owns the signals: add_signal_handler turns one into a callback that
        completes `stop`, and serving ends when it is done.  (A future, not
        loop.stop(): a stop() that lands while create_server() is still
        pending would be spent on that first run_until_complete().)

        The signals are held from before the loop exists until it runs.
        uvloop's handler only notes a signal; the note is acted on when the
        loop reads its own wake fd, and that fd is made, and set as the
        interpreter's, only when the loop starts.  A signal between
        add_signal_handler() and that moment was written to a wake fd nobody
        reads, noted, and never acted on: the server served on.  Held, it is
        delivered once serve() runs, to a loop that is listening for it.

        Once every transport is closed, the caller's handlers are put back and
        the signal is raised again for them, with the same effect it would
        have had on any other model.
        """
        with shutdown.held() as release:
            loop = self.new_event_loop()
            loop.set_exception_handler(self.on_loop_error)
            previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
            stop = loop.create_future()
            try:
                for signum in SIGNALS:
                    loop.add_signal_handler(signum, self.request_stop, stop, signum)
                loop.run_until_complete(self.serve(loop, stop, release))
            finally:
                # No signal may find the loop's handlers half removed (SIG_DFL
                # would kill the process mid-clean-up): hold them until the
                # caller's handlers are back.
                with shutdown.held():
                    self.close_all(loop)
                    for signum, handler in previous.items():
                        signal.signal(signum, handler)
        signal.raise_signal(stop.result())

    async def serve(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Future,
                    release: Callable[[], None]) -> None:
        release()  # the loop runs: a signal held until now reaches its handler
        self.server = await loop.create_server(
            lambda: Client(self), sock=self.listener, backlog=BACKLOG)
        await stop

    @staticmethod
    def request_stop(stop: asyncio.Future, signum: int) -> None:
        if not stop.done():
            stop.set_result(signum)

    def on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
            # Out of descriptors in asyncio's own accept loop, which logs a
            # traceback and stops accepting for a second.  Shed what is queued
            # instead, as every model does, and not one a second: a queue of
            # thousands would wait on it for an hour (uvloop's libuv sheds by
            # itself and never gets here).
            while (accepted := self.acceptor.accept()) is not None:
                if accepted[0] is not None:
                    accepted[0].close()  # a descriptor came free meanwhile: still one too many
            return
        loop.default_exception_handler(context)

    def close_all(self, loop: asyncio.AbstractEventLoop) -> None:
        for client in list(self.clients):
            client.gone = True
            client.transport.abort()
        if self.server is not None:
            self.server.close()
        loop.run_until_complete(self.settle())
        loop.close()
        self.acceptor.close()

    async def settle(self) -> None:
        """Let the loop run the connection_lost() callbacks the aborts scheduled."""
        for _ in range(100):
            if not self.clients:
                return
            await asyncio.sleep(0)


class UvloopServer(AsyncioServer):
    @staticmethod
    def new_event_loop() -> asyncio.AbstractEventLoop:
        import uvloop  # optional: `muxbench models` reports it missing

        return uvloop.new_event_loop()
