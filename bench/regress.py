"""`make regress`: run the quick suite with repeats, compare it with the committed baseline.

A regression counts only if it shows twice: the scenarios where `muxbench
compare` finds one are run again, and only a (point, model, metric) that
regresses in both runs fails the gate.  A one-off -- another process hogging
the CPU for a few seconds -- is shown, marked as not confirmed, and passes.

Exit status as `muxbench compare`: 0 no confirmed regression, 1 a confirmed
regression, 2 unusable input (no baseline, a bench run that wrote nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console

from bench.compare import add_judging_options, reference_of, render
from bench.judge import NOISE, REGRESSION, Cell, Comparison, compare_runs
from bench.results import ResultsError, load_results, resolve_run

Runner = Callable[[argparse.Namespace, Iterable[str] | None, Iterable[str] | None], Path]


def _latest(root: Path) -> Path | None:
    with contextlib.suppress(ResultsError):
        return resolve_run(None, root)
    return None


def bench_run(args: argparse.Namespace, scenarios: Iterable[str] | None = None,
              models: Iterable[str] | None = None) -> Path:
    """Run `muxbench bench` in its own process group; the run directory it wrote."""
    root = Path(args.out)
    before = _latest(root)
    cmd = [sys.executable, "-m", "bench.cli", "bench", "--suite", args.suite,
           "--repeats", str(args.repeats), "--out", str(root)]
    if scenarios:
        cmd += ["--scenarios", ",".join(sorted(scenarios))]
    if models:
        cmd += ["--models", ",".join(sorted(models))]
    print("$ muxbench " + " ".join(cmd[3:]), flush=True)
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        proc.wait()
    finally:
        # Whatever happened (Ctrl-C included), nothing of the run may outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    after = _latest(root)
    if after is None or after == before:
        raise ResultsError(f"`muxbench bench` (exit status {proc.returncode}) wrote no new run "
                           f"under {root}")
    return after


def _key(cell: Cell) -> tuple:
    return cell.scenario, cell.model, cell.protocol, cell.x, cell.metric


def confirm(first: Comparison, second: Comparison) -> list[Cell]:
    """Keep as regressions only the cells that regressed in both runs; return those."""
    again = {_key(c): c for c in second.cells if c.verdict == REGRESSION}
    confirmed = []
    for cell in first.cells:
        if cell.verdict != REGRESSION:
            continue
        if _key(cell) in again:
            confirmed.append(cell)
            cell.note = "; ".join(filter(None, [cell.note, "confirmed by the rerun"]))
        else:
            cell.verdict = NOISE
            cell.note = "; ".join(filter(None, [cell.note, "not confirmed by the rerun"]))
    return confirmed


def regress(args: argparse.Namespace, runner: Runner = bench_run) -> int:
    console = Console(width=None if sys.stdout.isatty() else 160)
    judging = {"reference": reference_of(args), "threshold": args.threshold,
               "alpha": args.alpha}
    try:
        baseline = load_results(args.baseline)
        first = compare_runs(baseline, load_results(runner(args, None, None)), **judging)
        suspects = [c for c in first.cells if c.verdict == REGRESSION]
        if suspects:
            console.print(f"{len(suspects)} regression(s); rerunning their scenarios once "
                          "to confirm")
            models = {c.model for c in suspects} | ({judging["reference"]} - {None})
            second = compare_runs(baseline, load_results(
                runner(args, {c.scenario for c in suspects}, models)), **judging)
            confirm(first, second)
    except ResultsError as exc:
        print(f"bench.regress: {exc}", file=sys.stderr)
        return 2
    render(first, console, args.changes_only)
    return first.exit_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.regress",
        description="Run the quick suite with repeats and compare it with the committed "
                    "baseline (see `muxbench compare --help`); a scenario with a regression "
                    "is rerun once and only a regression seen twice fails (exit 1).")
    parser.add_argument("--baseline", default="results/baseline",
                        help="baseline run directory (default: results/baseline)")
    parser.add_argument("--out", default="results", help="where the new runs are written "
                        "(default: results)")
    parser.add_argument("--suite", default="quick", help="suite to run (default: quick)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per point; 5 is the "
                        "fewest that can reach p < 0.01 (default: 5)")
    parser.add_argument("--changes-only", action="store_true",
                        help="show only rows with a change or too few repeats")
    add_judging_options(parser)
    args = parser.parse_args(argv)
    try:
        return regress(args)
    except KeyboardInterrupt:
        print("bench.regress: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
