"""The seed's tables, re-made with measured numbers.

The seed (chapter 4 notes) compares polling, selecting and interrupt-driven I/O,
and event-driven against polling chat, in words ("low", "high", "delayed by the
polling period"), and only asserts the rest: multi-process needs IPC to share
data, threads need synchronisation, multi-process memory grows with clients.
Each table here keeps the seed's rows and puts a measured median with its unit,
and the point it was measured at, in every cell that was a word; the asserted
costs become tables of their own (the fork chat's relay, the thread chat's
lock, PSS per connection).
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
    P999,
    PSS,
    PSS_PER_CONN,
    Metric,
)
from bench.report.findings import ratio
from bench.report.measures import Run, fmt, fmt_ratio, fmt_x, growth, pss_slope
from bench.report.tables import Cell, Table, header, value_at
from servers.models import MODELS

# The seed's three ways to learn that a socket is ready, in its words, and the models
# that show each: (model, approach, how it works), in catalogue order.
SEED_WORDS = {"polling": "polling (폴링)", "selecting": "selecting (셀렉팅)",
              "interrupt": "interrupt (인터럽트)"}
MECHANISMS = [(name, SEED_WORDS[model.approach], model.description)
              for name, model in MODELS.items() if model.approach in SEED_WORDS]
# The event-driven side of the seed's chat comparison: the first of these measured,
# epoll (the seed's own choice) before the others.
EVENT_DRIVEN = sorted((name for name, model in MODELS.items()
                       if model.approach in ("selecting", "event loop")),
                      key=lambda name: name != "epoll")
# The IPC table: the fork chat's relay against two models that share one address space.
CHAT_MODELS = ("fork", "thread", "epoll")


def _limits(run: Run, model: str) -> Cell:
    """What stopped this model, or how its cost grew, as measured."""
    cell = []
    for scenario in run.scenarios:
        points = run.points(scenario, model)
        dead = [p for p in points if not p.ok and p.failed]
        if dead:
            # The first clause says what went wrong; the table's notes have the rest.
            reason = (dead[0].failed[0].get("reason") or "no reason recorded").split(";")[0]
            cell.append(f"failed at {run.at(scenario, dead[0].x)}: {reason}")
        # Only a ceiling is a limit; other notes (e.g. timing overlaps) are about the trial.
        capped = [(p, t) for p in points for t in p.noted if t["reason"].startswith("ceiling")]
        if capped:
            point, trial = capped[0]
            cell.append(f"at {run.at(scenario, point.x)}: {trial['reason']}")
    sparse = [p for p in run.points("sparse", model) if p.median(CPU_PER_MSG) is not None]
    if len(sparse) >= 2:
        a, b = sparse[0], sparse[-1]
        cell.append(f"CPU/msg {fmt(a.median(CPU_PER_MSG), 'us')} -> "
                    f"{fmt(b.median(CPU_PER_MSG), 'us')} from {run.at('sparse', a.x)} to "
                    f"{fmt_x(b.x)}")
    return cell or ["no limit reached in this run"]


def mechanism_table(run: Run) -> Table:
    models = [row for row in MECHANISMS if row[0] in run.models()]
    names = [row[0] for row in models]
    idle_x = run.common_x("idle", [m for m in names if m in run.models("idle")], CPU)
    load_x = run.common_x("cpu_vs_clients", [m for m in names
                                             if m in run.models("cpu_vs_clients")], CPU_PER_MSG)
    table = Table(
        title="Polling / selecting / interrupt, measured (seed 4.1, 다중화)",
        columns=["approach", "model", "how it works", header(run, "idle", "CPU at idle", idle_x),
                 header(run, "cpu_vs_clients", "CPU per message", load_x),
                 header(run, "cpu_vs_clients", "p99 latency", load_x), "limits (measured)"],
        caption="Medians of the ok repeats; the seed's words replaced by the run's numbers.")
    for model, approach, how in models:
        table.add(approach, model, how, value_at(run, "idle", model, CPU, idle_x),
                  value_at(run, "cpu_vs_clients", model, CPU_PER_MSG, load_x),
                  value_at(run, "cpu_vs_clients", model, P99, load_x), _limits(run, model))
    if not models:
        table.notes.append("None of the models of this comparison was measured.")
        return table
    idle = sorted((v, m) for m in names if idle_x is not None
                  and (v := run.median("idle", m, idle_x, CPU)) is not None)
    if len(idle) >= 2:
        (lo, lo_m), (hi, hi_m) = idle[0], idle[-1]
        if lo > 0:
            table.sentences.append(
                f"With {fmt_x(idle_x)} idle clients {lo_m} used {fmt(lo, 'core')} of a core "
                f"and {hi_m} {fmt(hi, 'core')}: {fmt_ratio(hi / lo)} more.")
        else:
            zero = ", ".join(m for v, m in idle if v == 0)
            table.sentences.append(
                f"With {fmt_x(idle_x)} idle clients {hi_m} used {fmt(hi, 'core')} of a core "
                f"while {zero} used none that the sampler could measure.")
    grown = [(found[0], model, found) for model in names
             if (found := growth(run, "sparse", model, CPU_PER_MSG)) is not None]
    if len(grown) >= 2:
        parts = [f"{fmt_ratio(factor)} for {model} ({fmt_x(a.x)} -> {fmt_x(b.x)})"
                 for factor, model, (_, a, b) in sorted(grown, reverse=True)]
        table.sentences.append(
            f"As idle fds piled up beside {_active(run)} active ones, CPU per message changed "
            "by "
            + ", ".join(parts) + ".")
    return table


def _active(run: Run) -> str:
    actives = {t["point"].get("active") for t in run.results["trials"]
               if t["scenario"] == "sparse"}
    return fmt_x(actives.pop()) if len(actives) == 1 and None not in actives else "the"


def chat_table(run: Run) -> Table:
    ev = next((m for m in EVENT_DRIVEN if run.points("chat_fanout", m)), None)
    table = Table(title="Event-driven vs polling chat, measured (seed 4.4)",
                  columns=["aspect", f"event-driven ({ev or 'not measured'})", "polling",
                           "polling / event-driven"],
                  caption="Chat rows from `chat_fanout`, at the largest room both served.")
    pair = [m for m in (ev, "polling") if m]
    room = run.common_x("chat_fanout", pair, P99) if len(pair) == 2 else None
    idle_x = run.common_x("idle", pair, CPU) if len(pair) == 2 else None
    table.add("message handling", "a readiness event wakes the server",
              "the server re-checks every socket in a loop", "")
    rows = [("CPU use", "chat_fanout", CPU, room), ("CPU use with idle clients", "idle", CPU,
                                                     idle_x),
            ("delay, p50", "chat_fanout", P50, room), ("delay, p99", "chat_fanout", P99, room),
            ("real-time: worst delays, p99.9", "chat_fanout", P999, room)]
    for label, scenario, m, x in rows:
        cells = [value_at(run, scenario, model, m, x) if model else "not measured"
                 for model in (ev, "polling")]
        a, b = ((run.median(scenario, model, x, m) if model and x is not None else None)
                for model in (ev, "polling"))
        table.add(header(run, scenario, label, x), *cells,
                  fmt_ratio(b / a) if a and b else "n/a")
    table.add("delay added by sleeping between sweeps", "no sweep: woken by the kernel",
              _interval_delay(run), "")
    growth = [_growth(run, "chat_fanout", model, P99) for model in (ev, "polling")]
    table.add("scalability: p99 growth over the room sizes", *growth, "")
    sparse = [_growth(run, "sparse", model, CPU_PER_MSG) for model in (ev, "polling")]
    table.add("scalability: CPU/msg growth with idle fds", *sparse, "")
    if ev and room is not None:
        cpu = [run.median("chat_fanout", m, room, CPU) for m in pair]
        p99 = [run.median("chat_fanout", m, room, P99) for m in pair]
        if all(cpu) and all(p99):
            table.sentences.append(
                f"In a room of {fmt_x(room)} the polling server burned {fmt(cpu[1], 'core')} "
                f"of a core against {fmt(cpu[0], 'core')} for {ev} "
                f"({fmt_ratio(cpu[1] / cpu[0])}), and its p99 delay was "
                f"{fmt_ratio(p99[1] / p99[0])} {ev}'s.")
    slept = [p for p in run.points("polling_interval", "polling")
             if p.median(P50) is not None and p.median(CPU) is not None]
    if len(slept) >= 2:
        a, b = slept[0], slept[-1]
        table.sentences.append(
            f"Sleeping between sweeps trades one for the other: at "
            f"{run.at('polling_interval', b.x)} "
            f"polling used {fmt(b.median(CPU), 'core')} of a core with a p50 delay of "
            f"{fmt(b.median(P50), 'us')}, against {fmt(a.median(CPU), 'core')} and "
            f"{fmt(a.median(P50), 'us')} at {fmt_x(a.x)}.")
    return table


def _interval_delay(run: Run) -> Cell:
    every = run.points("polling_interval", "polling")
    points = [p for p in every if p.median(P50) is not None]
    if not points:
        return ["no ok repeat" if every else "not measured"]
    return [f"p50 {fmt(p.median(P50), 'us')} at {run.at('polling_interval', p.x)}"
            for p in points]


def _growth(run: Run, scenario: str, model: str | None, m: Metric) -> str:
    found = growth(run, scenario, model, m)
    if found is None:
        return "not measured"
    factor, a, b = found
    return (f"{fmt_ratio(factor)} ({fmt(a.median(m), m.unit)} -> "
            f"{fmt(b.median(m), m.unit)}, {fmt_x(a.x)} -> {fmt_x(b.x)})")


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
