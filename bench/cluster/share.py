"""Each generator host's share of a trial's load: counts split exactly, rates in proportion.

A point's load (clients, an open-loop rate) is divided over the generator
hosts so that the shares add up to the point, to the connection: the first
`total % hosts` hosts take one connection more.  A host whose share would be
no connection at all is left out of the trial.  Two workloads are not split:
a chat room must be one room (each generator checks the delivery of every line
its own clients sent, so all the room's clients live on one host), and the
sparse workload's few active connections beside many idle ones are one
pattern, kept whole on one host.
"""

from __future__ import annotations

UNSPLIT = ("chat", "sparse")


def split_count(total: int, hosts: int) -> list[int]:
    """`total` as `hosts` integers that differ by at most one and add up to it."""
    if hosts < 1:
        raise ValueError("at least one host is needed")
    base, extra = divmod(total, hosts)
    return [base + (i < extra) for i in range(hosts)]


def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _with(args: list[str], name: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(name) + 1] = value
    return out


def shares(load_args: list[str], hosts: int) -> list[list[str]]:
    """The `muxbench load` workload options of every host that takes part: at
    most `hosts` of them, their --clients adding up to the point's and their
    --rate in proportion to their clients."""
    workload = _option(load_args, "--workload")
    clients = int(_option(load_args, "--clients") or 1)
    if workload in UNSPLIT or hosts == 1:
        return [list(load_args)]
    counts = [n for n in split_count(clients, hosts) if n > 0]
    rate = _option(load_args, "--rate")
    out = []
    for n in counts:
        args = _with(load_args, "--clients", str(n))
        if rate is not None:
            args = _with(args, "--rate", repr(float(rate) * n / clients))
        out.append(args)
    return out
