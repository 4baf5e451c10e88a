"""The catalogue of server models: name, where its code lives, what it shows.

Every model is a class built as `Server(listener, protocol, options)` whose
`run()` serves until interrupted and, on the way out, closes every connection
and leaves no thread or child process behind.  Like `socketserver`, how a model
gets concurrency is its own business; what it says to clients is the protocol's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """Model-specific knobs (the protocol's limits travel with the protocol)."""

    interval: float = 0.0  # polling: sleep between sweeps (0 = pure busy-wait)
    wake_fd: int = -1  # readable when a signal arrived; see servers/shutdown.py
    workers: int = 1  # the models that take --workers: worker threads or processes


@dataclass(frozen=True)
class Model:
    name: str
    target: str  # "module:Class"
    # The seed's word for how the model learns that a socket is ready ("polling",
    # "selecting", "interrupt"), or for what else serves its clients at once
    # ("threads", "processes", "event loop", "thread pool", "worker processes").
    approach: str
    description: str
    requires: str | None = None  # a module that must be importable
    extra: str | None = None  # the optional extra that installs it, when not its own name
    # "module:function" that says why the machine cannot run the model (None: it
    # can), asked once `requires` is importable: a kernel may forbid what it needs.
    probe: str | None = None
    takes_workers: bool = False  # sized by --workers
    reuse_port: bool = False  # its listener is made with SO_REUSEPORT, for others to join
    # "module:function(private) -> int": --max-clients when none is given, for a
    # model that would otherwise hold clients until the machine gives out.
    default_clients: str | None = None

    def unavailable_reason(self) -> str | None:
        if self.requires:
            # Imported, not merely found: a binding that is there but will not
            # load (a broken build, a wheel for another platform) is as missing.
            try:
                importlib.import_module(self.requires)
            except ImportError as exc:
                extra = self.extra or self.requires
                return (f"{self.requires} cannot be imported ({exc}); "
                        f"pip install 'muxbench[{extra}]'")
        if self.probe:
            return load(self.probe)()
        return None

    def server_class(self) -> type:
        return load(self.target)


def load(target: str):
    """The object named by "module:name", imported only when asked for."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


MODELS: dict[str, Model] = {
    m.name: m
    for m in (
        Model("polling", "servers.busy_polling:PollingServer", "polling",
              "busy polling: non-blocking sockets, try accept and recv on every one, forever"),
        Model("select", "servers.select_loop:SelectServer", "selecting",
              "select(2): fd bitmaps rebuilt and scanned on every call; fds >= 1024 refused"),
        Model("poll", "servers.poll_loop:PollServer", "selecting",
              "poll(2): an fd array scanned on every call, no fd ceiling"),
        Model("epoll", "servers.epoll_loop:EpollServer", "selecting",
              "epoll(7), level-triggered: the kernel keeps the interest list, reports ready fds"),
        Model("epoll-et", "servers.epoll_loop:EdgeTriggeredEpollServer", "selecting",
              "epoll(7), edge-triggered: one registration, read and write until EAGAIN"),
        Model("sigio", "servers.sigio_loop:SigioServer", "interrupt",
              "signal-driven I/O: O_ASYNC raises SIGIO, the server sleeps until it comes"),
        Model("thread", "servers.thread_per_client:ThreadServer", "threads",
              "a thread per client, blocking sockets; the chat room behind a lock",
              default_clients="servers.limits:thread_clients"),
        Model("fork", "servers.fork_per_client:ForkServer", "processes",
              "a process per client; chat lines cross processes through socketpairs to a hub",
              default_clients="servers.limits:fork_clients"),
        Model("threadpool", "servers.thread_pool:ThreadPoolServer", "thread pool",
              "an epoll dispatcher thread hands ready sockets to a fixed pool of worker threads",
              takes_workers=True),
        Model("prefork", "servers.prefork:PreforkServer", "worker processes",
              "processes forked up front share one listener, each with its own epoll loop",
              takes_workers=True),
        Model("reuseport", "servers.reuseport:ReuseportServer", "worker processes",
              "processes with a SO_REUSEPORT listener each, each its own epoll loop (nginx)",
              takes_workers=True, reuse_port=True),
        Model("uring", "servers.uring_loop:UringServer", "completion",
              "io_uring: multishot accept, recv into provided buffers, one submit-and-wait a turn",
              requires="liburing", extra="uring", probe="servers.uring_loop:unavailable"),
        Model("asyncio", "servers.asyncio_server:AsyncioServer", "event loop",
              "asyncio Protocols on the stdlib event loop (the usual Python choice)"),
        Model("uvloop", "servers.asyncio_server:UvloopServer", "event loop",
              "the same asyncio code on uvloop's libuv-based loop", requires="uvloop"),
    )
}
