"""Where each model breaks: the C100K scenarios' table, plot and verdicts.

Read from the c100k scenarios' trials, the ok ones and those "stopped" in
their run (bench/run/capacity.py), which still measured the connections the
model did hold: at its limit, those are the figures that matter.  A point
refused before it ran has no figures, only its reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bench.metrics import CPU, CPU_PER_MSG, P99, PSS_PER_CONN, Metric
from bench.report.measures import Run, colour, fmt, fmt_ratio, fmt_x, model_sort_key
from bench.report.tables import Table
from bench.results import is_generator_bound, metric, summary

IDLE, SPARSE = "c100k_idle", "c100k_sparse"
HELD = Metric("load.connected", "connections held", "count")
KERNEL_PER_CONN = Metric("derived.kernel_mem_per_conn_bytes", "kernel memory per connection",
                         "bytes")
GENERATOR_PER_CONN = Metric("load.generator_memory.uss_per_connection_bytes",
                            "generator memory per connection", "bytes")
MEASURED = ("ok", "stopped")
O_ACTIVE_BOUND = 1.2  # CPU per active message within this of its 1k figure: O(active)
PLOT_NAME = "c100k_cpu_per_msg"


def _size(trial: dict) -> int:
    point = trial["point"]
    return int(point.get("idle", point.get("clients", 0)))


def _trials(run: Run, scenario: str, model: str) -> list[dict]:
    return [t for t in run.results["trials"]
            if t["scenario"] == scenario and t["model"] == model]


def _measured(trials: Iterable[dict], bound: bool = False) -> dict[int, list[dict]]:
    """{N: trials with figures at N}: ok, or stopped in the run with a load record;
    with `bound`, the generator-bound ones instead, whose figures are bounds."""
    out: dict[int, list[dict]] = {}
    for t in trials:
        kept = is_generator_bound(t) if bound else t["status"] in MEASURED
        if kept and t.get("load"):
            out.setdefault(_size(t), []).append(t)
    return dict(sorted(out.items()))


def series(run: Run, scenario: str, model: str, m: Metric,
           bounds: bool = False) -> list[tuple[int, dict]]:
    """[(N, summary of m)] over the measured points that have it; with `bounds`, over
    the generator-bound ones instead."""
    out = []
    for n, trials in _measured(_trials(run, scenario, model), bounds).items():
        stat = summary(metric(t, m.path) for t in trials)
        if stat["median"] is not None:
            out.append((n, stat))
    return out


def models(run: Run) -> list[str]:
    found = {t["model"] for t in run.results["trials"] if t["scenario"] in (IDLE, SPARSE)}
    return sorted(found, key=model_sort_key)


def stop_reason(run: Run, model: str) -> str:
    """The reason of the model's first stop (smallest N), or that it held every point."""
    stopped = [t for t in run.results["trials"] if t["scenario"] in (IDLE, SPARSE)
               and t["model"] == model and t["status"] == "stopped"]
    if stopped:
        first = min(stopped, key=lambda t: (t.get("stopped") or {}).get("at", _size(t)))
        stop = first.get("stopped") or {}
        if "why" in stop:  # without the notes a trial's reason may carry (overlap, cleanup)
            return f"stopped at {stop['at']:,}: {stop['why']}"
        return first["reason"]
    # A generator-bound point held its connections: the generator, not the model,
    # ran out of CPU, so it is no stop.
    failed = [t for t in run.results["trials"] if t["scenario"] in (IDLE, SPARSE)
              and t["model"] == model and t["status"] in ("failed", "invalid")
              and not is_generator_bound(t)]
    if failed:
        first = min(failed, key=_size)
        return f"{first['status']} at {fmt_x(_size(first))}: {first.get('reason')}"
    return "held every point"


def _last(points: list[tuple[int, dict]]) -> tuple[int, float] | None:
    return (points[-1][0], points[-1][1]["median"]) if points else None


def _at_largest(run: Run, model: str, m: Metric) -> str:
    last = _last(series(run, IDLE, model, m))
    return "n/a" if last is None else f"{fmt(last[1], m.unit)} at {fmt_x(last[0])}"


def _held(run: Run, model: str) -> int:
    """The most connections the model held at once, in either scenario (a
    generator-bound point held them too: only its throughput is a bound)."""
    return int(max((metric(t, HELD.path) or 0 for scenario in (IDLE, SPARSE)
                    for bound in (False, True)
                    for trials in _measured(_trials(run, scenario, model), bound).values()
                    for t in trials), default=0))


def limits_table(run: Run) -> Table:
    names = models(run)
    table = Table(
        "Where each model breaks (C100K)",
        ["model", "largest N held", "why it stopped", "PSS per connection (anon)",
         "kernel memory per connection", "generator USS per connection", "server CPU at idle",
         "CPU per active msg / p99 of the 10 active, by idle N"],
        caption="Largest N held: the most connections the model held at once in either "
                "c100k scenario (the generator's count). Memory and idle CPU at the largest "
                "idle point measured; kernel memory is both ends' sockets (slabs and buffer "
                "pages, /proc/net/sockstat and /proc/slabinfo); the generator's is its "
                "workers' USS over the connections they hold. A point the model could not "
                "hold is \"stopped\", with the reason, and larger ones are not tried. "
                f"\"{CPU_PER_MSG.bound} X (generator-bound)\": the load generator ran out of CPU "
                "first; the server's cost per message at that point is at most X.")
    for model in names:
        held = _held(run, model)
        active = _active(run, model)
        table.add(model, fmt_x(held) if held else "none", stop_reason(run, model),
                  *(_at_largest(run, model, m) for m in (PSS_PER_CONN, KERNEL_PER_CONN,
                                                         GENERATOR_PER_CONN, CPU)),
                  active or ["n/a"])
    table.sentences = verdicts(run, names)
    return table


def _active(run: Run, model: str) -> list[str]:
    """'N: CPU per message / p99' at every c100k_sparse N measured; where every trial
    at N was generator-bound, the CPU figure as its bound and no p99 (it has none)."""
    exact = dict(series(run, SPARSE, model, CPU_PER_MSG))
    bound = {n: s for n, s in series(run, SPARSE, model, CPU_PER_MSG, bounds=True)
             if n not in exact}
    p99 = dict(series(run, SPARSE, model, P99))
    out = []
    for n in sorted(exact.keys() | bound.keys()):
        if n in exact:
            cell = (f"{fmt(exact[n]['median'], 'us')} / "
                    f"{fmt(p99[n]['median'], 'us') if n in p99 else 'n/a'}")
        else:
            cell = f"{CPU_PER_MSG.bound} {fmt(bound[n]['median'], 'us')} (generator-bound)"
        out.append(f"{fmt_x(n)}: {cell}")
    return out


def growth(run: Run, model: str) -> tuple[int, float, int, float] | None:
    """(first N, its CPU per active message, last N, its figure) in c100k_sparse."""
    points = series(run, SPARSE, model, CPU_PER_MSG)
    if len(points) < 2 or not points[0][1]["median"]:
        return None
    (n0, s0), (n1, s1) = points[0], points[-1]
    return n0, s0["median"], n1, s1["median"]


def verdicts(run: Run, names: list[str]) -> list[str]:
    """Sentences computed from the figures: how CPU per active message moved as idle
    connections grew, for each model measured at two N or more; who reached the most."""
    out = []
    for model in names:
        g = growth(run, model)
        if g is None:
            continue
        n0, v0, n1, v1 = g
        ratio = v1 / v0
        # Only a ratio: past one process's limit the multi-worker models' workers grow
        # with N too, so growth there is not a readiness call's O(watched) alone.
        shape = (f"within {O_ACTIVE_BOUND}x: O(active)" if ratio <= O_ACTIVE_BOUND
                 else "it grows with the idle connections")
        out.append(f"{model}: CPU per active message {fmt(v0, 'us')} with {fmt_x(n0)} idle, "
                   f"{fmt(v1, 'us')} with {fmt_x(n1)} ({fmt_ratio(ratio)}; {shape}).")
    held = {m: _held(run, m) for m in names}
    if held and max(held.values()):
        top = max(held.values())
        best = [m for m, n in held.items() if n == top]
        out.append(f"The most connections held at once: {fmt_x(top)}, by {', '.join(best)}.")
    return out


def render_plot(run: Run, out: Path) -> Path | None:
    """CPU per active message against idle connections, log-log, one line per model;
    None when no c100k_sparse point was measured."""
    from bench.report.plots import US, _figure, _log_axis, _save

    lines = {m: pts for m in models(run) if (pts := series(run, SPARSE, m, CPU_PER_MSG))}
    if not lines:
        return None
    fig, (ax,) = _figure(run, "C100K: server CPU per active message vs idle connections "
                              "(10 active)")
    xs, ys = [], []
    for model, pts in lines.items():
        x = [n for n, _ in pts]
        y = [s["median"] * US[0] for _, s in pts]
        ax.plot(x, y, marker="o", linewidth=1.5, color=colour(model), label=model)
        xs += x
        ys += y
    _log_axis(ax.set_xscale, xs)
    _log_axis(ax.set_yscale, ys)
    ax.set_xlabel("idle connections (10 active)")
    ax.set_ylabel(f"{CPU_PER_MSG.label} ({US[1]})")
    ax.grid(True, alpha=0.3)
    return _save(fig, out / f"{PLOT_NAME}.png")


def measured(run: Run) -> bool:
    return any(t["scenario"] in (IDLE, SPARSE) for t in run.results["trials"])

