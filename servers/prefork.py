"""Prefork: worker processes made before any client, sharing the one listener.

UNP ch. 30's preforked server, as Apache's prefork runs it: the parent
listens, forks --workers children up front, and every child accepts from the
same listening socket (fork shares it); the kernel's one accept queue hands
each connection to one of them.  The textbook child blocks in accept() and
serves its client to the end before it accepts the next: N children serve N
clients at once and client N+1 waits in the queue, which is why Apache runs
hundreds of them.  That form cannot hold 1100 clients, nor a chat room whose
members all stay connected, with one worker per CPU -- one, where a harness
gives the server one CPU.  So each child here runs an epoll loop of its own
over the shared listener and all of its clients (servers/workers.py: the
epoll model for echo, relays to the parent's hub for chat).

The thundering herd: every child waits on the one listener.  A blocking
accept() has woken one waiter per connection since Linux 2.2, but each child
here waits in its own epoll, and every epoll watching the listener would be
woken for each connection, all but one child to find accept() empty-handed.
EPOLLEXCLUSIVE (Linux 4.5) on the listener wakes one of them, or a few,
instead.  (UNP's other answer is a lock around accept(), Apache's
AcceptMutex, which makes the children take turns.)  A child that still finds
the queue empty gets EAGAIN from its non-blocking accept() and waits again;
one that is woken accepts once per wake-up, and is woken again while the
queue holds more.
"""

from __future__ import annotations

import select

from servers.workers import WorkerPool


class PreforkServer(WorkerPool):
    listen_events = select.EPOLLIN | select.EPOLLEXCLUSIVE
