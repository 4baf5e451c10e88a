"""`muxbench report [RUN]`: REPORT.md, the PNGs and the terminal tables, from one results.json.

Nothing here measures anything: every figure is recomputed from the run's raw
trials, so the report of an old run can be regenerated at any time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bench.report import limits
from bench.report.findings import scenario_sentences
from bench.report.hosts import hosts_table
from bench.report.measures import Run, scenario_order
from bench.report.seed import chat_table, ipc_table, lock_table, mechanism_table, memory_table
from bench.report.tables import (
    Table,
    environment_table,
    not_measured_table,
    print_rich,
    scenario_table,
    to_markdown,
)
from bench.report.textbook import textbook_table
from bench.results import ResultsError, load_results, results_file

REPORT_FILE = "REPORT.md"
PLOT_SUBDIR = "plots"  # inside the run directory, so REPORT.md is self-contained


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write RUN/REPORT.md and the plots (PNG) from a run's results.json, and print the "
        "tables. The PNGs go into RUN/plots/ (linked from REPORT.md) and are copied to --plots.")
    parser.add_argument("run", nargs="?", metavar="RUN",
                        help="a run directory, a results.json file, or a run id under --root "
                             "(default: ROOT/latest)")
    parser.add_argument("--plots", default="plots", metavar="DIR",
                        help="also copy the PNGs here (default: plots/)")
    parser.add_argument("--root", default="results", metavar="DIR",
                        help="where runs live (default: results/)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="do not print the tables to the terminal")


def _load(arg: str | None, root: str) -> tuple[Path, dict]:
    path = results_file(arg, root)
    return path.parent, load_results(path)  # the report goes next to the results


def build_tables(run: Run) -> tuple[list[Table], list[tuple[str, Table]]]:
    """The seed comparisons and the models past them and, per scenario in report order,
    its table with sentences."""
    seed = [mechanism_table(run), chat_table(run), ipc_table(run), lock_table(run),
            memory_table(run), textbook_table(run)]
    per_scenario = []
    for scenario in scenario_order(run):
        if run.xs(scenario):
            table = scenario_table(run, scenario)
            table.sentences = scenario_sentences(run, scenario)
        else:
            table = not_measured_table(run, scenario)
        per_scenario.append((scenario, table))
    return seed, per_scenario


def render_markdown(run: Run, seed: list[Table], per_scenario: list[tuple[str, Table]],
                    plots: dict[str, Path]) -> str:
    from bench.report.plots import PLOTS_FOR_SCENARIO

    res = run.results
    parts = [f"# muxbench report: {res['run_id']}", ""]
    if res["status"] != "complete":
        parts += [f"**This run is {res['status']}**: points it did not reach are marked "
                  "\"not measured\".", ""]
    parts += [
        "Every figure is the median of the repeats whose status is ok, recomputed from "
        "`results.json`. CPU is server CPU time over wall time as a percentage of one core "
        "(whole process tree); memory is PSS. Failed and invalid repeats are counted in the "
        "cells and listed, with their reasons, under each table.", ""]
    parts.append(to_markdown(environment_table(run), level=2))
    hosts = hosts_table(res)
    if hosts is not None:
        parts.append(to_markdown(hosts, level=2))
    if "cpu_vs_clients" in plots:
        parts += [_image("cpu_vs_clients", plots), ""]
    parts += ["## The seed's comparisons, measured", ""]
    parts += [to_markdown(t) for t in seed[:2]]
    parts += ["## What the seed asserts in words, measured", ""]
    parts += [to_markdown(t) for t in seed[2:5]]
    parts += ["## Past the textbook", ""]
    parts += [to_markdown(t) for t in seed[5:]]
    if limits.measured(run):
        parts += ["## Where each model breaks", "", to_markdown(limits.limits_table(run))]
        if limits.PLOT_NAME in plots:
            parts += [_image(limits.PLOT_NAME, plots), ""]
    parts += ["## Scenarios", ""]
    for scenario, table in per_scenario:
        parts.append(to_markdown(table))
        parts += [_image(n, plots) for n in PLOTS_FOR_SCENARIO.get(scenario, []) if n in plots]
        parts.append("")
    return "\n".join(parts)


def _image(name: str, plots: dict[str, Path]) -> str:
    return f"![{name}]({PLOT_SUBDIR}/{plots[name].name})"


def _write(run: Run, seed: list[Table], per_scenario: list[tuple[str, Table]], run_dir: Path,
           copy_to: Path) -> tuple[Path, dict[str, Path]]:
    """REPORT.md and the PNGs in the run directory, the PNGs copied to `copy_to` too."""
    from bench.report.plots import render_plots

    copy = copy_to.resolve() != (run_dir / PLOT_SUBDIR).resolve()
    if copy:
        copy_to.mkdir(parents=True, exist_ok=True)  # fail before the slow part, not after
    plots = render_plots(run, run_dir / PLOT_SUBDIR)
    if limits.measured(run) and (path := limits.render_plot(run, run_dir / PLOT_SUBDIR)):
        plots[limits.PLOT_NAME] = path
    report = run_dir / REPORT_FILE
    report.write_text(render_markdown(run, seed, per_scenario, plots), encoding="utf-8")
    if copy:
        for path in plots.values():
            shutil.copy2(path, copy_to / path.name)
    return report, plots


def run(args: argparse.Namespace) -> int:
    try:
        run_dir, results = _load(args.run, args.root)
    except ResultsError as exc:
        print(f"muxbench report: {exc}", file=sys.stderr)
        return 2
    run_ = Run(results)
    seed, per_scenario = build_tables(run_)
    copy_to = Path(args.plots)
    try:
        report, plots = _write(run_, seed, per_scenario, run_dir, copy_to)
    except OSError as exc:
        print(f"muxbench report: cannot write {exc.filename or 'the report'}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        hosts = hosts_table(results)
        c100k = [limits.limits_table(run_)] if limits.measured(run_) else []
        print_rich([environment_table(run_), *([hosts] if hosts else []), *seed, *c100k,
                    *(t for _, t in per_scenario)])
    print(f"muxbench report: wrote {report} and {len(plots)} plots "
          f"({run_dir / PLOT_SUBDIR}, copied to {copy_to})")
    return 0
