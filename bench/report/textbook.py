"""Past the textbook: the servers people run beside the seed's readiness loop.

The seed stops at epoll and signals.  io_uring (completion instead of
readiness), nginx's SO_REUSEPORT workers, Apache's prefork and a Java NIO
style thread pool are what came after; this table sets each against the two
the project measures everything by -- epoll, the seed's own answer, and
uvloop, what a Python programmer would pick -- on the same figures: CPU per
message and p99 under the headline load, system calls per message (from the
`syscalls` scenario, counted by perf), memory per connection, and how many
workers the model was given.
"""

from __future__ import annotations

from bench.metrics import CPU_PER_MSG, P99, PSS_PER_CONN, SYSCALLS_PER_MSG
from bench.report.findings import ratio
from bench.report.measures import Run, fmt, fmt_ratio, fmt_x
from bench.report.tables import Table, header, value_at
from servers.models import MODELS

# The approaches past the seed's, in catalogue order, after the yardsticks.
YARDSTICKS = ("epoll", "uvloop")
PAST = tuple(name for name, model in MODELS.items()
             if model.approach in ("completion", "worker processes", "thread pool"))


def textbook_table(run: Run) -> Table:
    # Without a newer model the yardsticks alone would repeat the other tables.
    measured = [m for m in (*YARDSTICKS, *PAST) if m in run.models()]
    models = measured if any(m in PAST for m in measured) else []
    load_x = run.common_x("cpu_vs_clients", [m for m in models
                                             if m in run.models("cpu_vs_clients")], CPU_PER_MSG)
    calls_x = run.common_x("syscalls", [m for m in models if m in run.models("syscalls")],
                           SYSCALLS_PER_MSG)
    table = Table(
        title="Past the textbook: completion, worker processes, a thread pool",
        columns=["model", "approach", "workers",
                 header(run, "cpu_vs_clients", "CPU per message", load_x),
                 header(run, "cpu_vs_clients", "p99 latency", load_x),
                 header(run, "syscalls", "system calls per message", calls_x),
                 "PSS per connection (largest idle point)"],
        caption="epoll and uvloop are the yardsticks. Every model gets the same server CPUs; "
                "the multi-worker ones one worker per server CPU, so on a machine that gives "
                "the server one CPU they show what their extra machinery costs, not how they "
                "scale. System calls are counted by perf in the `syscalls` scenario only "
                "(the count costs a little on every call).")
    for model in models:
        table.add(model, MODELS[model].approach, _workers(run, model),
                  value_at(run, "cpu_vs_clients", model, CPU_PER_MSG, load_x),
                  value_at(run, "cpu_vs_clients", model, P99, load_x),
                  value_at(run, "syscalls", model, SYSCALLS_PER_MSG, calls_x),
                  value_at(run, "idle", model, PSS_PER_CONN, None))
    if not models:
        table.notes.append("None of the models past the textbook was measured in this run.")
        return table
    if calls_x is None and run.models("syscalls"):
        table.notes.append("No `syscalls` point has counts for all of these models: perf "
                           "missing or the trials not ok (see the scenario's table).")
    table.sentences += _sentences(run, calls_x, load_x)
    return table


def _workers(run: Run, model: str) -> str:
    given = sorted({t["workers"] for t in run.results["trials"]
                    if t["model"] == model and t.get("workers") is not None})
    return ", ".join(map(str, given)) or "-"


def _sentences(run: Run, calls_x, load_x) -> list[str]:
    out = []
    if "uring" in run.models() and "epoll" in run.models() and calls_x is not None:
        calls = {m: run.median("syscalls", m, calls_x, SYSCALLS_PER_MSG) for m in ("uring",
                                                                                   "epoll")}
        cpu = {m: run.median("syscalls", m, calls_x, CPU_PER_MSG) for m in ("uring", "epoll")}
        if None in calls.values() or None in cpu.values():
            return out
        fewer = ratio(calls["epoll"], calls["uring"])
        if fewer is not None:
            cost = ratio(cpu["uring"], cpu["epoll"])
            out.append(
                f"With {fmt_x(calls_x)} clients io_uring made {fmt(calls['uring'], 'count')} "
                f"system calls per message against epoll's {fmt(calls['epoll'], 'count')} "
                f"({fmt_ratio(fewer)} fewer), and spent {fmt(cpu['uring'], 'us')} of CPU per "
                f"message against {fmt(cpu['epoll'], 'us')}"
                + (f" ({fmt_ratio(cost)} epoll's)." if cost is not None else "."))
    if load_x is not None:
        base = run.median("cpu_vs_clients", "epoll", load_x, CPU_PER_MSG)
        costs = sorted((v, m) for m in PAST
                       if (v := run.median("cpu_vs_clients", m, load_x, CPU_PER_MSG)))
        if base and costs:
            parts = [f"{m} {fmt_ratio(v / base)}" for v, m in costs]
            out.append(f"At {run.at('cpu_vs_clients', load_x)}, CPU per message against "
                       f"epoll's {fmt(base, 'us')}: " + ", ".join(parts) + ".")
    return out
