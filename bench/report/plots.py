"""The report's PNGs: one function per question, all drawn the same way.

Every plot shows medians with min-max bars, one fixed colour per model
(bench.report.measures.COLOURS), the C reference as a black dashed "limit" line, points
whose every repeat was generator-bound as hollow markers at the bound (where the
metric has one, bench.metrics.Metric.bound), points with no ok repeat otherwise as
crosses on the x axis, units on both axes, and a
footer naming the machine, commit and date, so a PNG read alone still says what
it measured and where.  matplotlib is imported here, lazily, with Agg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.metrics import (
    CONN_RATE,
    CPU,
    CPU_PER_MSG,
    DELIVERY_P99,
    P50,
    P99,
    PSS,
    RESPONSE_P99,
    SERVICE_P99,
    THROUGHPUT,
    Metric,
)
from bench.report.measures import Run, colour, fmt_x, knee
from servers.reference import C_SERVER

# How each axis shows a metric: factor applied to the stored value, unit label.
PERCENT = (100.0, "% of a core")
MS = (1e-3, "ms")
US = (1.0, "µs")
MIB = (1 / (1 << 20), "MiB")
PER_S = (1.0, "msgs/s")
CONN_S = (1.0, "connections/s")


# The legend entry of the hollow markers; the metric's bound sign goes in.
BOUND_LABEL = "hollow: generator-bound;\nthe server's figure is {} this"
FIG_W, LEGEND_W = 6.0, 2.8  # inches per panel, and for the legend on the right


def _plain_ticks(ax: Any) -> None:
    """Log axes labelled 1, 2, 5, 10 ... (denser on a narrow range, sparser on a wide one)
    rather than 2x10^3 with crowded minor labels."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    for axis, scale, limits in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()),
                                (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
        if scale == "log":
            decades = math.log10(max(limits) / min(limits))
            subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else \
                (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
            axis.set_major_locator(LogLocator(base=10, subs=subs))
            # The majors already grid the decade; minor ticks only cost drawing time.
            axis.set_minor_locator(NullLocator())
        if scale in ("log", "symlog"):
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,g}"))
            axis.set_minor_formatter(NullFormatter())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _footer(fig: Any, run: Run) -> None:
    env, res = run.env, run.results
    commit = (env.get("git_commit") or "unknown")[:10]
    text = (f"{env.get('hostname', '?')}: {env.get('cpu_model', '?')} x{env.get('cpus', '?')}, "
            f"{env.get('kernel', '?')} | commit {commit} | run {res['run_id']} "
            f"| {str(res['started_at'])[:10]}")
    fig.text(0.01, 0.01, text, fontsize=7, color="#555555", ha="left", va="bottom")


def _figure(run: Run, title: str, panels: int = 1) -> tuple[Any, list[Any]]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, panels, figsize=(FIG_W * panels + LEGEND_W, 4.8),
                             squeeze=False)
    fig.suptitle(title, fontsize=12)
    _footer(fig, run)
    return fig, list(axes[0])


def _save(fig: Any, path: Path) -> Path:
    handles, labels = [], []
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    width = fig.get_figwidth()
    right = 1 - LEGEND_W / width
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(right + 0.01, 0.5),
               fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.9 / width, right=right, bottom=0.2, top=0.88,
                        wspace=0.9 / FIG_W)
    for ax in fig.axes:
        _plain_ticks(ax)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _log_axis(set_scale: Any, values: list[float]) -> None:
    """Log scale for these values; symlog when some are zero, so they stay on the plot."""
    values = [v for v in values if v == v]  # drop nan
    positive = [v for v in values if v > 0]
    if positive and len(positive) < len(values):
        set_scale("symlog", linthresh=min(positive))
    elif positive:
        set_scale("log")


def _x_axis(ax: Any, run: Run, scenario: str, xs: list[float]) -> None:
    if run.scenarios.get(scenario, {}).get("log_x"):
        _log_axis(ax.set_xscale, xs)
    ax.set_xlabel(run.x_label(scenario))


def _series(ax: Any, run: Run, scenario: str, m: Metric, scale: tuple[float, str],
            log_y: bool = False) -> None:
    """One line per model: median and min-max bars; hollow markers at the bounds of
    generator-bound points; crosses where no repeat is ok and none gives a bound."""
    factor, unit = scale
    all_x: list[float] = []
    all_y: list[float] = []
    plotted = any_dead = any_bound = False
    for model in run.models(scenario):
        pts = [(p.x, p.stat(m)) for p in run.points(scenario, model)]
        good = [(x, s) for x, s in pts if s["median"] is not None]
        style = ({"color": "black", "linestyle": "--", "linewidth": 2.0, "marker": "s",
                  "label": f"{C_SERVER} (C: the limit)", "zorder": 5}
                 if model == C_SERVER else
                 {"color": colour(model), "marker": "o", "linewidth": 1.5, "label": model})
        if good:
            xs = [x for x, _ in good]
            med, err = _bars([s for _, s in good], factor)
            ax.errorbar(xs, med, yerr=err, capsize=3, markersize=4, **style)
            all_x += xs
            all_y += med + [v - below for v, below in zip(med, err[0], strict=True)]
            plotted = True
            for p in run.points(scenario, model):
                if p.noted and p.median(m) is not None:  # e.g. select past fd 1023
                    ax.annotate("ceiling", (p.x, p.median(m) * factor), fontsize=7,
                                color=style["color"], textcoords="offset points",
                                xytext=(-40, 8), bbox={"fc": "white", "ec": "none", "alpha": 0.6})
        else:
            ax.plot([], [], **style)  # its colour still belongs in the legend
        bounds = [(p.x, stat["median"] * factor) for p in run.points(scenario, model)
                  if (stat := p.bound_stat(m)) is not None and stat["median"] is not None]
        if bounds:
            xs, ys = map(list, zip(*bounds, strict=True))
            ax.plot(xs, ys, linestyle="none", marker=style["marker"], markersize=7,
                    markerfacecolor="none", markeredgecolor=style["color"], markeredgewidth=1.5,
                    label="_bound", zorder=style.get("zorder", 2))
            all_x += xs
            all_y += ys
            any_bound = True
        drawn = {x for x, _ in bounds}
        dead = [p.x for p in run.points(scenario, model) if not p.ok and p.x not in drawn]
        if dead:
            ax.plot(dead, [0.02] * len(dead), linestyle="none", marker="x", markersize=9,
                    markeredgewidth=2, color=style["color"], clip_on=False,
                    transform=ax.get_xaxis_transform())
            all_x += dead
            any_dead = True
    if any_bound:
        ax.plot([], [], linestyle="none", marker="o", markerfacecolor="none",
                markeredgecolor="grey", label=BOUND_LABEL.format(m.bound))
    if any_dead:
        # One neutral legend entry for the crosses, whatever their colours.
        ax.plot([], [], linestyle="none", marker="x", markeredgewidth=2, color="grey",
                label="x on axis: no ok repeat\n(failed or invalid)")
    if not all_x:
        ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center",
                transform=ax.transAxes)
        return
    _x_axis(ax, run, scenario, all_x)
    if log_y:
        _log_axis(ax.set_yscale, all_y)
        if ax.get_yscale() == "symlog":
            # Nothing here is negative: no mirrored half, just room to see the zeros.
            ax.set_ylim(bottom=-0.3 * ax.yaxis.get_transform().linthresh)
    if not (plotted or any_bound):
        ax.text(0.5, 0.5, "no ok repeat: see the notes in REPORT.md", ha="center",
                va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_ylabel(f"{m.label} ({unit})")
    ax.grid(True, alpha=0.3)


def _bars(stats: list[dict], factor: float) -> tuple[list[float], list[list[float]]]:
    """Scaled medians and their [below, above] min-max bar lengths (nan where unmeasured)."""
    nan = float("nan")
    rows = [(s["median"], s["min"], s["max"]) if s["median"] is not None else (nan,) * 3
            for s in stats]
    return ([m * factor for m, _, _ in rows],
            [[(m - lo) * factor for m, lo, _ in rows], [(hi - m) * factor for m, _, hi in rows]])


def _simple(run: Run, out: Path, name: str, title: str, scenario: str,
            panels: list[tuple[Metric, tuple[float, str], bool]]) -> Path:
    fig, axes = _figure(run, title, len(panels))
    for ax, (m, scale, log_y) in zip(axes, panels, strict=True):
        _series(ax, run, scenario, m, scale, log_y)
    return _save(fig, out / f"{name}.png")


def _open_loop(run: Run, out: Path) -> Path:
    scenario = "open_loop"
    fig, (ax, service) = _figure(
        run, "Open loop vs offered load: response time from the intended send (knee ringed), "
        "service time from the actual send", panels=2)
    _series(ax, run, scenario, RESPONSE_P99, MS, log_y=True)
    _series(service, run, scenario, SERVICE_P99, MS, log_y=True)
    for model in run.models(scenario):
        k = knee(run, scenario, model)
        value = run.median(scenario, model, k, P99) if k is not None else None
        if value is None:
            continue
        ax.plot([k], [value * MS[0]], marker="o", markersize=16, markerfacecolor="none",
                markeredgecolor=colour(model), markeredgewidth=2, linestyle="none",
                label="ring: knee (<90 % delivered\nor p99 >10x low-load p99)")
    return _save(fig, out / "open_loop.png")


def _polling_interval(run: Run, out: Path) -> Path:
    scenario = "polling_interval"
    fig, (ax,) = _figure(run, "Polling interval: CPU spent against latency added")
    plotted = False
    for model in run.models(scenario):
        pts = [p for p in run.points(scenario, model)
               if p.median(CPU) is not None and p.median(P50) is not None]
        if not pts:
            continue
        plotted = True
        cpu = [p.stat(CPU) for p in pts]
        for m, marker, style in ((P50, "o", "-"), (P99, "^", ":")):
            lat = [p.stat(m) for p in pts]
            (x, xerr), (y, yerr) = _bars(cpu, PERCENT[0]), _bars(lat, MS[0])
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker=marker, linestyle=style,
                        color=colour(model), capsize=3, label=f"{model} {m.label}")
        for p in pts:
            ax.annotate(f"{fmt_x(p.x)}", (p.median(CPU) * PERCENT[0], p.median(P50) * MS[0]),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
    if plotted:
        _log_axis(ax.set_xscale, [x for line in ax.lines for x in line.get_xdata()])
        _log_axis(ax.set_yscale, [y for line in ax.lines for y in line.get_ydata()])
        ax.set_xlabel(f"server CPU ({PERCENT[1]})")
        ax.set_ylabel(f"latency ({MS[1]})")
        ax.set_title(f"labels: {run.x_label(scenario)}", fontsize=9)
        ax.grid(True, alpha=0.3)
    else:
        ax.text(0.5, 0.5, "no ok repeat: see the notes in REPORT.md" if run.xs(scenario)
                else "not measured in this run", ha="center", va="center",
                transform=ax.transAxes)
    return _save(fig, out / "polling_interval.png")


# (file name, title, scenario, panels): the plots that are one series per model.
SIMPLE = [
    ("cpu_vs_clients", "Server CPU vs connected clients (fixed rate per client)",
     "cpu_vs_clients", [(CPU, PERCENT, True)]),
    ("idle_cpu", "Server CPU with idle clients", "idle", [(CPU, PERCENT, True)]),
    ("memory_pss", "Server memory (PSS, whole process tree) vs idle clients", "idle",
     [(PSS, MIB, True)]),
    ("echo_clients", "Closed-loop echo: throughput and p99 latency vs clients",
     "echo_clients", [(THROUGHPUT, PER_S, False), (P99, MS, True)]),
    ("echo_size", "Closed-loop echo vs message size", "echo_size",
     [(THROUGHPUT, PER_S, True), (CPU_PER_MSG, US, True)]),
    ("chat_fanout", "Chat fan-out: delivery latency and CPU vs room size", "chat_fanout",
     [(DELIVERY_P99, MS, True), (CPU, PERCENT, True)]),
    ("sparse", "CPU per message with few active among many idle fds", "sparse",
     [(CPU_PER_MSG, US, True)]),
    ("churn", "Connection churn: connect + echo + close rate", "churn",
     [(CONN_RATE, CONN_S, True)]),
]


def render_plots(run: Run, out: Path) -> dict[str, Path]:
    """Write every PNG into `out`; returns {plot name: path}."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: _simple(run, out, name, title, scenario, panels)
             for name, title, scenario, panels in SIMPLE}
    paths["open_loop"] = _open_loop(run, out)
    paths["polling_interval"] = _polling_interval(run, out)
    return paths


# Which plots illustrate which scenario's table in REPORT.md.
PLOTS_FOR_SCENARIO = {"cpu_vs_clients": ["cpu_vs_clients"], "idle": ["idle_cpu", "memory_pss"],
                      "echo_clients": ["echo_clients"], "echo_size": ["echo_size"],
                      "open_loop": ["open_loop"], "chat_fanout": ["chat_fanout"],
                      "sparse": ["sparse"], "churn": ["churn"],
                      "polling_interval": ["polling_interval"]}
