"""The seed's comparison tables and word-only claims, re-made with measured numbers.

The seed (chapter 4 notes) compares polling, selecting and interrupt-driven I/O,
and event-driven against polling chat, in words ("low", "high", "delayed by the
polling period").  Each table here keeps its rows and puts a measured median
with its unit, and the point it was measured at, in every cell that was a word.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.metrics import CPU, CPU_PER_MSG, P50, P99, P999, PSS, Metric
from bench.report.measures import Run, fmt, fmt_ratio, fmt_x
from bench.report.tables import Cell, Table, point_cell

# The seed's three ways to learn that a socket is ready, and the models that show each.
MECHANISMS = [
    ("polling", "polling (폴링)", "the CPU keeps trying every socket"),
    ("select", "selecting (셀렉팅)", "select(2): fd bitmaps copied and scanned per call"),
    ("poll", "selecting (셀렉팅)", "poll(2): an fd array scanned per call"),
    ("epoll", "selecting (셀렉팅)", "epoll(7): the kernel keeps the list, reports ready fds"),
    ("epoll-et", "selecting (셀렉팅)", "epoll(7) edge-triggered"),
    ("sigio", "interrupt (인터럽트)", "SIGIO wakes the process, which rescans its sockets"),
]
EVENT_DRIVEN = ("epoll", "epoll-et", "select", "poll", "asyncio", "uvloop")


def value_at(run: Run, scenario: str, model: str, m: Metric, x: Any) -> str:
    """A median with its unit, or why there is none; with the point when x is None (the
    model's largest measured point is used then)."""
    if x is None:
        last = run.last_ok(scenario, model, m)
        points = run.points(scenario, model)
        if last is None:
            return " ".join(point_cell(points[-1], (m,))) if points else "not measured"
        return (" ".join(point_cell(run.point(scenario, model, last[0]), (m,)))
                + f" at {run.at(scenario, last[0])}")
    return " ".join(point_cell(run.point(scenario, model, x), (m,)))


def header(run: Run, scenario: str, text: str, x: Any) -> str:
    return f"{text} at {run.at(scenario, x)}" if x is not None else text


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


def growth(run: Run, scenario: str, model: str | None, m: Metric) -> tuple | None:
    """(last / first median, first point, last point) over a model's measured points."""
    points = [p for p in run.points(scenario, model or "") if p.median(m) is not None]
    if len(points) < 2 or not points[0].median(m):
        return None
    return points[-1].median(m) / points[0].median(m), points[0], points[-1]


def _growth(run: Run, scenario: str, model: str | None, m: Metric) -> str:
    found = growth(run, scenario, model, m)
    if found is None:
        return "not measured"
    factor, a, b = found
    return (f"{fmt_ratio(factor)} ({fmt(a.median(m), m.unit)} -> "
            f"{fmt(b.median(m), m.unit)}, {fmt_x(a.x)} -> {fmt_x(b.x)})")


def pss_slope(run: Run, model: str) -> float | None:
    """Bytes of PSS each extra idle connection adds: a least-squares line over the medians."""
    pts = [(p.x, p.median(PSS)) for p in run.points("idle", model) if p.median(PSS)]
    if len(pts) < 2:
        return None
    xs, ys = zip(*pts, strict=True)
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])
