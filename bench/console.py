"""What `muxbench bench` shows while it runs: a rich progress display on a terminal,
one plain line per trial otherwise, and a summary table at the end."""

from __future__ import annotations

import sys
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.results import group_points, metric, summary


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
        self.console = Console()
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
    """Per scenario and model: trials ok, and the medians over all its points."""
    table = Table(title=f"muxbench {results['suite']} run {results['run_id']} "
                        f"({results['status']})")
    for name in ("scenario", "model", "ok/trials", "CPU (core)", "CPU/msg (us)",
                 "msgs/s", "p99 (us)"):
        table.add_column(name, justify="left" if name in ("scenario", "model") else "right")
    counts: Counter = Counter()
    oks: Counter = Counter()
    for trial in results["trials"]:
        counts[trial["scenario"], trial["model"]] += 1
        oks[trial["scenario"], trial["model"]] += trial["status"] == "ok"
    grouped = group_points(results)
    for scenario, model in counts:
        trials = [t for (s, m, _, _), ts in grouped.items() if (s, m) == (scenario, model)
                  for t in ts]
        cells = [_median(trials, path, fmt) for path, fmt in (
            ("server.cpu_util", "{:.3f}"), ("derived.cpu_per_msg_us", "{:.1f}"),
            ("derived.throughput_msgs_s", "{:.0f}"), ("derived.p99_us", "{:.0f}"))]
        table.add_row(scenario, model, f"{oks[scenario, model]}/{counts[scenario, model]}",
                      *cells)
    return table


def _median(trials: list[dict], path: str, fmt: str) -> str:
    value = summary(metric(t, path) for t in trials)["median"]
    return "-" if value is None else fmt.format(value)
