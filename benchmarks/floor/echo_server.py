"""The floor: the smallest Python epoll echo server that does what the C one does.

Level-triggered epoll, one 64 KiB recv and one send per readiness report,
TCP_NODELAY, nothing else: no protocol core, no limits, no backlog (a partial
write is dropped on the floor, which 64-byte messages with one in flight never
cause).  It is not a server to use.  It answers one question for
`server_cpu.py`: how much of a Python model's cost over C is the interpreter
itself -- a recv and a send through CPython -- and how much is the model.

usage: python benchmarks/floor/echo_server.py --port N   (prints "listening on")
"""

from __future__ import annotations

import contextlib
import select
import signal
import socket
import sys


def main() -> None:
    port = int(sys.argv[sys.argv.index("--port") + 1])
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    listener.setblocking(False)
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    socks: dict[int, socket.socket] = {}
    while True:
        for fd, _ in ep.poll():
            if fd == listener.fileno():
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:  # the client reset before we got to it
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                socks[sock.fileno()] = sock
                ep.register(sock.fileno(), select.EPOLLIN)
                continue
            sock = socks[fd]
            try:
                data = sock.recv(65536)
                if data:
                    sock.send(data)
                    continue
            except OSError:  # reset by the peer, like EOF: the client is gone
                pass
            ep.unregister(fd)
            del socks[fd]
            sock.close()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C, or SIGTERM made into one
        main()
