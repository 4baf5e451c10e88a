"""The report's tables, built once, rendered twice: Markdown for REPORT.md, rich for a terminal."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.metrics import Metric
from bench.report.measures import Point, Run, fmt, fmt_x, scenario_metrics
from bench.results import TRIAL_STATUSES, is_generator_bound, metric

Cell = list[str]  # stacked lines of one cell


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    caption: str = ""  # how to read the cells
    notes: list[str] = field(default_factory=list)  # failed / invalid trials, caveats
    sentences: list[str] = field(default_factory=list)  # computed from the numbers

    def add(self, *cells: str | Cell) -> None:
        self.rows.append([[c] if isinstance(c, str) else c for c in cells])


def _md_cell(cell: Cell) -> str:
    return "<br>".join(part.replace("|", "\\|") for part in cell)


def to_markdown(table: Table, level: int = 3) -> str:
    lines = [f"{'#' * level} {table.title}", ""]
    if table.caption:
        lines += [table.caption, ""]
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"- {note}" for note in table.notes]
    if table.sentences:
        lines += ["", " ".join(table.sentences)]
    lines.append("")
    return "\n".join(lines)


def print_rich(tables: list[Table]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

    console = Console()
    for table in tables:
        rich_table = RichTable(title=Text(table.title), caption=Text(table.caption) or None,
                               box=box.SIMPLE_HEAD, title_justify="left")
        for column in table.columns:
            rich_table.add_column(Text(column), overflow="fold")
        for row in table.rows:
            # Text, not str: a reason such as "[Errno 24]" must not be read as markup.
            rich_table.add_row(*(Text("\n".join(cell)) for cell in row))
        console.print(rich_table)
        for note in table.notes:
            console.print(Text.assemble("  ", ("!", "yellow"), f" {note}"), soft_wrap=True)
        if table.sentences:
            # Prose is left for the terminal to wrap, so it can be copied whole.
            console.print(Text("  " + " ".join(table.sentences)), soft_wrap=True)
        console.print()


def spread(stat: dict) -> str:
    """Half the min-max range as a percentage of the median ('' for one repeat)."""
    if stat["n"] < 2 or not stat["median"]:
        return ""
    half = (stat["max"] - stat["min"]) / 2 / abs(stat["median"]) * 100
    return f" ±{half:.0f} %"


def point_cell(point: Point | None, metrics: tuple[Metric, ...]) -> Cell:
    if point is None:
        return ["not measured"]
    lost = [f"{len(trials)} {name}" for name, trials in _uncounted(point) if trials]
    if point.only_bound:
        return [*(bound_text(point, m) for m in metrics), f"({len(point.bound)} generator-bound)"]
    if not point.ok:
        return [" + ".join(lost) if lost else "not measured"]
    cell = []
    for m in metrics:
        stat = point.stat(m)
        cell.append(fmt(stat["median"], m.unit) + spread(stat))
    if lost:
        cell.append("(+" + ", ".join(lost) + ")")
    if point.noted:
        cell.append("(ceiling)" if all(_reason(t).startswith("ceiling") for t in point.noted)
                    else "(see note)")
    return cell


def _uncounted(point: Point) -> list[tuple[str, list[dict]]]:
    """The repeats no median counts, by what they are."""
    return [("failed", point.failed), ("invalid", point.unbound_invalid),
            ("generator-bound", point.bound)]


def bound_text(point: Point, m: Metric) -> str:
    """'≥ 61,800 msgs/s': the median of a generator-bound point's repeats, as the
    bound it is (Metric.bound); 'n/a' for a metric that has none."""
    stat = point.bound_stat(m)
    if stat is None or stat["median"] is None:
        return fmt(None, m.unit)
    return f"{m.bound} {fmt(stat['median'], m.unit)}"


def trouble_notes(run: Run, scenario: str) -> list[str]:
    """One line per point with failed, invalid or generator-bound repeats, with their reasons."""
    notes = []
    for model in run.models(scenario):
        for point in run.points(scenario, model):
            for status, trials in (*_uncounted(point), ("ok with a note", point.noted)):
                if not trials:
                    continue
                reasons = Counter(_reason(t) for t in trials)
                why = "; ".join(f"{r}" + (f" (x{n})" if n > 1 else "") for r, n in reasons.items())
                notes.append(f"{model} at {run.x_label(scenario)} = {fmt_x(point.x)}: "
                             f"{len(trials)} of {_repeats(point)} repeats {status} -- {why}")
    return notes


def _repeats(point: Point) -> int:
    return len(point.ok) + len(point.failed) + len(point.invalid)


def _reason(trial: dict) -> str:
    load = trial.get("load") or {}
    return trial.get("reason") or load.get("invalid_reason") or "no reason recorded"


def scenario_table(run: Run, scenario: str) -> Table:
    meta = run.scenarios.get(scenario, {})
    metrics = scenario_metrics(scenario)
    xs = run.xs(scenario)
    label = run.x_label(scenario)
    table = Table(
        title=f"{meta.get('title', scenario)} (`{scenario}`)",
        columns=["model"] + [f"{label} = {fmt_x(x)}" for x in xs],
        caption=((f"{meta['description'][:1].upper()}{meta['description'][1:]}. "
                  if meta.get("description") else "")
                 + "Each cell: " + " / ".join(m.label for m in metrics)
                 + "; median of the ok repeats, ± half their min-max range."),
    )
    for model in run.models(scenario):
        table.add(model, *(point_cell(run.point(scenario, model, x), metrics) for x in xs))
    if any(p.only_bound for model in run.models(scenario) for p in run.points(scenario, model)):
        table.caption += (" A cell of ≥ / ≤ figures: every repeat was generator-bound (the load "
                          "generator ran out of CPU first), and the median of theirs is a bound "
                          "on the server's; n/a where a figure has no such direction.")
    table.notes = trouble_notes(run, scenario)
    absent = [m for m in run.models() if m not in run.models(scenario)]
    if absent:
        table.notes.append("Not measured in this scenario: " + ", ".join(absent) + ".")
    return table


def not_measured_table(run: Run, scenario: str) -> Table:
    meta = run.scenarios.get(scenario, {})
    table = Table(title=f"{meta.get('title', scenario)} (`{scenario}`)", columns=["model"])
    table.notes = [f"Scenario `{scenario}` was not measured in this run."]
    return table


def environment_table(run: Run) -> Table:
    env, res = run.env, run.results
    place = env.get("placement") or {}
    packages = env.get("packages") or {}
    statuses = Counter(t["status"] for t in res["trials"])
    table = Table(title="Environment", columns=["item", "value"])
    rows: list[tuple[str, Any]] = [
        ("run", f"{res['run_id']} (suite {res['suite']}, {res['status']})"),
        ("started / finished", f"{res['started_at']} / {res.get('finished_at') or 'not finished'}"),
        ("host", env.get("hostname")),
        ("kernel", env.get("kernel")),
        ("CPU", f"{env.get('cpu_model')} x {env.get('cpus')}"),
        ("Python", env.get("python")),
        ("packages", ", ".join(f"{k} {v}" for k, v in sorted(packages.items())) or None),
        ("git commit", env.get("git_commit")),
        ("somaxconn / RLIMIT_NOFILE", f"{env.get('somaxconn')} / {env.get('rlimit_nofile')}"),
        ("placement", _placement(place)),
        ("servers run from a command line", _servers(env.get("servers"))),
        ("load average before / after", f"{_loadavg(env.get('loadavg_before'))} / "
                                         f"{_loadavg(env.get('loadavg_after'))}"),
        ("other work on the load generator's CPUs", _worst_windows(res["trials"], "other_s")),
        ("time the hypervisor took from them (steal)",
         _worst_windows(res["trials"], "steal_s")),
        ("DAMON memory monitors running", env.get("damon_monitors")),
        # "stopped" only in runs that have it (C100K: points past a model's limit).
        ("trials", ", ".join(f"{statuses.get(s, 0)} {s}" for s in TRIAL_STATUSES
                             if s != "stopped" or statuses.get(s))),
    ]
    bound = sum(map(is_generator_bound, res["trials"]))
    if bound:
        rows.append(("generator-bound trials", _generator_cpus(bound, len(res["trials"]), place)))
    for name, value in rows:
        table.add(name, "not recorded" if value is None else str(value))
    return table


def _worst_windows(trials: list[dict], key: str) -> str | None:
    """A figure of the generator's CPUs per window (client.window): median and
    worst, with the worst trial named -- how quiet the machine was."""
    windows = [(value, trial) for trial in trials
               if (value := metric(trial, f"client.window.{key}")) is not None]
    if not windows:
        return None
    median = statistics.median(value for value, _ in windows)
    worst, trial = max(windows, key=lambda item: item[0])
    point = ", ".join(f"{k} {v}" for k, v in trial["point"].items())
    return (f"median {median:.3f} s, max {worst:.3f} s a window "
            f"({trial['scenario']}, {trial['model']}, {point}; {len(windows)} windows)")


def _generator_cpus(bound: int, trials: int, place: dict) -> str:
    """How many trials the load generator bounded, and on how many CPUs it ran."""
    cpus = place.get("client_cpus")
    if not cpus:
        return f"{bound} of {trials}: the load generator ran out of CPU first"
    had = f"{len(cpus)} CPU{'s' if len(cpus) > 1 else ''}"
    had = f"it had {had}, every one but the server's" if place.get("pinned") else \
        f"it shared {had} with the server"
    return (f"{bound} of {trials}: the load generator ran out of CPU first; {had}. On a "
            "machine with more cores it gets every CPU but the server's, and fewer points "
            "are bounds")


def _servers(servers: dict | None) -> str | None:
    """Each command server (the C reference, --server entries) as it was started."""
    if servers is None:
        return None
    return "; ".join(f"{name} ({server['protocol']}): {server['command']}"
                     for name, server in servers.items()) or "none"


def _loadavg(values: list | None) -> str:
    return " ".join(f"{v:.2f}" for v in values) if values else "not recorded"


def _placement(place: dict) -> str | None:
    if not place:
        return None
    pinned = "pinned" if place.get("pinned") else "not pinned"
    text = (f"{pinned}; server CPUs {place.get('server_cpus')}, "
            f"load generator CPUs {place.get('client_cpus')}")
    return f"{text} ({place['note']})" if place.get("note") else text


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
