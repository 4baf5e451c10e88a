"""What `muxbench bench` shows while it runs: a rich progress display on a terminal,
one plain line per trial otherwise, and a summary table at the end."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.results import metric, summary
from bench.run.scenarios import SCENARIOS


def describe(scenario: str, model: str, point: dict, repeat: int) -> str:
    params = " ".join(f"{k}={v}" for k, v in point.items())
    return f"{scenario} {model} {params} #{repeat}"


def outcome_line(trial: dict) -> str:
    server, load = trial.get("server") or {}, trial.get("load") or {}
    parts = [trial["status"]]
    if server.get("cpu_util") is not None:
        parts.append(f"cpu {server['cpu_util']:.3f} core")
    per_msg = metric(trial, "derived.cpu_per_msg_us")
    if per_msg is not None:
        parts.append(f"{per_msg:.1f} us/msg")
    if load.get("throughput_msgs_s"):
        parts.append(f"{load['throughput_msgs_s']:.0f} msg/s")
    p99 = metric(trial, "derived.p99_us")
    if p99 is not None:
        parts.append(f"p99 {p99:.0f} us")
    if trial.get("reason"):
        parts.append(f"({trial['reason']})")
    return "  ".join(parts)


class Display:
    """Progress for the suite and the current trial; plain lines when not a TTY."""

    def __init__(self, total: int, tty: bool | None = None) -> None:
        self.total = total
        self.tty = sys.stdout.isatty() if tty is None else tty
        # Off a terminal rich would wrap the summary at 80 columns; a log is wider.
        self.console = Console() if self.tty else Console(width=200)
        self.done = 0
        self.progress = None
        if self.tty:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=self.console, transient=False)
            self.suite_task = self.progress.add_task("suite", total=total)
            self.trial_task = self.progress.add_task("", total=None)

    def __enter__(self) -> Display:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()

    def note(self, text: str) -> None:
        if self.progress:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def started(self, label: str) -> None:
        if self.progress:
            self.progress.reset(self.trial_task, total=None, description=label)

    def finished(self, label: str, trial: dict) -> None:
        self.done += 1
        line = f"[{self.done:>{len(str(self.total))}}/{self.total}] {label}: {outcome_line(trial)}"
        if self.progress:
            self.progress.advance(self.suite_task)
            if trial["status"] != "ok":
                self.note(line)
        else:
            print(line, flush=True)


def summary_table(results: dict) -> Table:
    """Models by scenarios: trials ok of run, and the scenario's headline figure
    (median over its ok trials, all points together: a glance, not the report)."""
    scenarios = results["scenarios"]
    table = Table(title=f"muxbench {results['suite']} run {results['run_id']} "
                        f"({results['status']})")
    table.add_column("model")
    for name in scenarios:
        headline = _headline(name)
        table.add_column(f"{name}\n{headline[1] if headline else ''}", justify="right")
    cells: dict[tuple[str, str], list[dict]] = {}
    for trial in results["trials"]:
        cells.setdefault((trial["model"], trial["scenario"]), []).append(trial)
    models = list(dict.fromkeys(t["model"] for t in results["trials"]))
    for model in models:
        row = [model]
        for name in scenarios:
            trials = cells.get((model, name), [])
            row.append(_cell(trials, _headline(name)))
        table.add_row(*row)
    return table


def _headline(scenario: str) -> tuple[str, str, str] | None:
    # A stored run may name a scenario this version no longer has.
    return SCENARIOS[scenario].headline if scenario in SCENARIOS else None


def _cell(trials: list[dict], headline: tuple[str, str, str] | None) -> str:
    if not trials:
        return ""
    ok = [t for t in trials if t["status"] == "ok"]
    value = summary(metric(t, headline[0]) for t in ok)["median"] if headline else None
    figure = "-" if value is None else headline[2].format(value)
    return figure if len(ok) == len(trials) else f"{figure} ({len(ok)}/{len(trials)} ok)"
