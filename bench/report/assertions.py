"""What the seed only asserts in words, as measured costs.

- multi-process needs IPC to share data: what the fork chat's relay costs;
- threads need synchronisation: what the thread chat pays beyond its echo;
- multi-process memory grows with clients: PSS per connection.
"""

from __future__ import annotations

from bench.metrics import (
    CPU,
    CPU_PER_DELIVERY,
    CPU_PER_MSG,
    CTX_PER_DELIVERY,
    CTX_PER_MSG,
    P50,
    P99,
    PSS,
    PSS_PER_CONN,
)
from bench.report.claims import header, pss_slope, value_at
from bench.report.findings import ratio
from bench.report.measures import Run, fmt, fmt_ratio, fmt_x
from bench.report.tables import Table

CHAT_MODELS = ("fork", "thread", "epoll")


def ipc_table(run: Run) -> Table:
    models = [m for m in CHAT_MODELS if run.points("chat_fanout", m)]
    room = run.common_x("chat_fanout", models, P99) if models else None
    metrics = (P50, P99, CPU_PER_DELIVERY, CTX_PER_DELIVERY, CPU)
    where = (f" Measured at {run.x_label('chat_fanout')} = {fmt_x(room)}, the largest room "
             "all of them served." if room is not None else "")
    table = Table(
        title="Multi-process needs IPC: the fork chat's relay, measured",
        columns=["model"] + [m.label for m in metrics],
        caption="`fork` relays every chat line through socketpairs to a hub process; "
                "`thread` and `epoll` share the room in one address space." + where)
    for model in models:
        table.add(model, *(value_at(run, "chat_fanout", model, m, room) for m in metrics))
    if room is None or "fork" not in models:
        table.notes.append("Needs a `chat_fanout` point where `fork` and thread or epoll "
                           "all have ok repeats; this run has none.")
        return table
    fork = {m: run.median("chat_fanout", "fork", room, m) for m in (P99, CPU_PER_MSG)}
    for other in models[1:]:
        p99 = ratio(fork[P99], run.median("chat_fanout", other, room, P99))
        cost = run.median("chat_fanout", other, room, CPU_PER_MSG)
        if p99 is None or cost is None or fork[CPU_PER_MSG] is None:
            continue
        table.sentences.append(
            f"In a room of {fmt_x(room)}, fork's p99 delivery latency was {fmt_ratio(p99)} "
            f"{other}'s, and it spent {fmt(fork[CPU_PER_MSG] - cost, 'us')} more CPU per "
            f"delivered line ({fmt(fork[CPU_PER_MSG], 'us')} against {fmt(cost, 'us')}).")
    return table


def lock_table(run: Run) -> Table:
    """Thread vs epoll in echo (nothing shared) and in chat (one room behind a lock)."""
    rows = [("echo", "cpu_vs_clients"), ("chat", "chat_fanout")]
    table = Table(
        title="Threads need synchronisation: what the shared chat room costs",
        columns=["workload", "x", "thread CPU/msg", "epoll CPU/msg", "thread / epoll",
                 "thread ctx switches/msg", "epoll ctx switches/msg"],
        caption="Echo shares nothing between threads; chat takes the room lock for every "
                "line and hands it to each member's writer thread. A message is one echoed "
                "reply in echo and one line received by one client in chat. The extra "
                "thread/epoll ratio in chat bounds what that synchronisation costs.")
    extra = {}
    for name, scenario in rows:
        x = run.common_x(scenario, ["thread", "epoll"], CPU_PER_MSG)
        if x is None:
            table.add(name, f"no {scenario} point with ok repeats of both", "", "", "", "", "")
            continue
        t, e = (run.median(scenario, m, x, CPU_PER_MSG) for m in ("thread", "epoll"))
        extra[name] = (t, e, x)
        table.add(name, f"{run.x_label(scenario)} = {fmt_x(x)}", fmt(t, "us"), fmt(e, "us"),
                  fmt_ratio(t / e) if e else "n/a",
                  *(value_at(run, scenario, m, CTX_PER_MSG, x) for m in ("thread", "epoll")))
    if len(extra) == 2:
        (te, ee, _), (tc, ec, room) = extra["echo"], extra["chat"]
        if ee and ec:
            extra_us = (tc - ec) - (te - ee)
            verdict = (f"the lock and the hand-offs between threads add about "
                       f"{fmt(extra_us, 'us')} per delivered line beyond the cost of threads alone"
                       if extra_us > 0 else
                       "no cost beyond that of threads alone shows in chat "
                       f"(difference {fmt(extra_us, 'us')})")
            table.sentences.append(
                f"Threads cost {fmt_ratio(te / ee)} epoll's CPU per message in echo but "
                f"{fmt_ratio(tc / ec)} in chat (room of {fmt_x(room)}): {verdict}.")
    return table


def memory_table(run: Run) -> Table:
    models = run.models("idle")
    xs = run.xs("idle")
    first, last = (xs[0], xs[-1]) if xs else (None, None)
    ends = list(dict.fromkeys((first, last)))  # one column when the run has one point
    table = Table(
        title="Multi-process memory grows with clients: PSS per connection",
        columns=["model", *(header(run, "idle", "PSS", x) for x in ends),
                 "PSS per connection (fit)", "PSS per connection (largest point)"],
        caption="PSS counts shared pages once, split among the processes sharing them, so a "
                "forked tree is not over-counted as RSS would be. The largest-point column "
                "counts anonymous pages only (heap, stacks, pages a child copied on write): "
                "the server's share of libpython's pages moves with whatever else runs.")
    slopes = {}
    for model in models:
        slopes[model] = pss_slope(run, model)
        table.add(model, *(value_at(run, "idle", model, PSS, x) for x in ends),
                  fmt(slopes[model], "bytes") if slopes[model] is not None else "n/a",
                  value_at(run, "idle", model, PSS_PER_CONN, None))
    # One source for every figure of the sentence: the fitted slopes when fork has one,
    # else the run's own per-connection figures at each model's largest point.
    fitted = {m: v for m, v in slopes.items() if v is not None and v > 0}
    at_last = {m: found[1] for m in models
               if (found := run.last_ok("idle", m, PSS_PER_CONN)) and found[1] > 0}
    known, source = ((fitted, "slope fitted over the idle points") if "fork" in fitted
                     else (at_last, "at each model's largest point"))
    if "fork" in known and len(known) >= 2:
        others = sorted((v, m) for m, v in known.items() if m != "fork")
        parts = [f"{fmt_ratio(known['fork'] / v)} {m}'s {fmt(v, 'bytes')}"
                 for v, m in (others[0], others[-1])]
        table.sentences.append(
            f"Each connection adds {fmt(known['fork'], 'bytes')} of PSS to the fork server "
            f"({source}): " + " and ".join(dict.fromkeys(parts)) + ".")
    big = run.last_ok("idle", "fork", PSS)
    if big:
        cpu = run.median("idle", "fork", big[0], CPU)
        table.sentences.append(
            f"With {fmt_x(big[0])} idle clients the fork tree held {fmt(big[1], 'bytes')}"
            + (f" and used {fmt(cpu, 'core')} of a core." if cpu is not None else "."))
    return table
