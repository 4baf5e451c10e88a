"""The floor: the smallest Python epoll echo client that does what the C one does.

Closed loop, one message in flight per connection, each message carrying its
sequence number and checked whole against what was sent -- the C client
(loadgen/c/echo_client.c) line for line, and nothing of `muxbench load`'s
recording, scheduling or accounting (nor its sending a round's messages
together).  It answers one question for `loadgen_rate.py`: how close to C
does the same loop get in Python on this machine, so that the generator's
gap splits into the interpreter's and its own.

usage: python benchmarks/floor/echo_client.py --port P [--conns 50] [--size 64]
           [--duration 5] [--warmup 1]
prints: roundtrips N seconds S rate R errors E cpu_us_per_roundtrip C   (the C client's line)
"""

from __future__ import annotations

import argparse
import select
import socket
import struct
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--conns", type=int, default=50)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args()
    size, ep = args.size, select.epoll()
    socks, bodies, sent, got, seqs = {}, {}, {}, {}, {}
    for i in range(args.conns):
        sock = socket.create_connection((args.host, args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        fd = sock.fileno()
        socks[fd], seqs[fd], got[fd] = sock, 0, b""
        bodies[fd] = bytes((i * 31 + j * 7) % 256 for j in range(8, size))
        ep.register(fd, select.EPOLLIN)
    pack, clock = struct.Struct("<Q").pack, time.monotonic
    roundtrips = errors = 0
    start, cpu_start = clock(), time.process_time()
    open_at, close_at = start + args.warmup, start + args.warmup + args.duration
    for fd, sock in socks.items():
        sent[fd] = pack(0) + bodies[fd]
        sock.send(sent[fd])
    while (t := clock()) < close_at:
        for fd, _ in ep.poll(close_at - t):
            try:
                data = got[fd] + socks[fd].recv(size - len(got[fd]))
            except OSError:  # reset: as the C client, an error and the end of it
                data = got[fd]
            if len(data) < size:
                if len(data) == len(got[fd]):  # EOF or reset: the server is gone
                    errors += 1
                    ep.unregister(fd)
                got[fd] = data
                continue
            got[fd] = b""
            errors += data != sent[fd]
            t = clock()
            roundtrips += open_at <= t < close_at
            seqs[fd] += 1
            sent[fd] = pack(seqs[fd]) + bodies[fd]
            try:
                socks[fd].send(sent[fd])
            except OSError:
                errors += 1
    cpu, completed = time.process_time() - cpu_start, sum(seqs.values())
    print(f"roundtrips {roundtrips} seconds {args.duration:.6f} "
          f"rate {roundtrips / args.duration:.1f} errors {errors} "
          f"cpu_us_per_roundtrip {cpu * 1e6 / completed if completed else 0.0:.3f}")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
