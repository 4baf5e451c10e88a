"""`muxbench compare BASE NEW`: which differences between two runs are real changes.

Absolute times swing 3x between identical runs on these machines, so a raw
NEW/BASE ratio says more about the weather than the code.  The judging lives in
bench/gate/judge.py (ratios normalised by a reference model of the same run, a
threshold AND a one-sided Mann-Whitney U test, the two tests pyperf and asv
apply; a large change that too few repeats cannot test is "untested"); this
module is the command and what CI reads of it:

- render(): a rich table, what fails first -- regressions, untested changes,
  improvements, then notes -- and the unchanged rows counted in one line;
- to_json(): the verdicts, counts and exit status meanings, for machines;
- write_junit(): one JUnit test case per cell, which every CI shows natively;
- the exit status, from judge.ExitStatus (0 fine, 1 regression, 2 bad input,
  3 a large change too few repeats could not test).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
import xml.etree.ElementTree as ET
from dataclasses import asdict
from typing import TextIO

from rich.console import Console
from rich.table import Table

from bench.gate.judge import (
    EXIT_MEANINGS,
    IMPROVEMENT,
    METRICS,
    NA,
    NOISE,
    REFERENCE,
    REGRESSION,
    TOO_FEW,
    UNTESTED,
    UNTESTED_RATIO,
    Cell,
    Comparison,
    ExitStatus,
    compare_runs,
    repeats_needed,
)
from bench.results import ResultsError, load_results, results_file
from muxbench.argtypes import float_where

STYLE = {REGRESSION: "bold red", UNTESTED: "bold red", IMPROVEMENT: "green",
         TOO_FEW: "yellow", NA: "dim", REFERENCE: "dim", NOISE: ""}
# The order rows are shown in, what fails first; a row's rank is its worst cell's.
# Rows whose cells are all noise, n/a or reference are counted, not shown.
SHOWN = (REGRESSION, UNTESTED, IMPROVEMENT, TOO_FEW)
# A regression is a check that failed; an untested change is a check that could not
# be made, JUnit's <error>: CI shows it apart from failures, as exit status 3 is apart
# from 1, and both fail the build.  A cell with too few repeats to test, or not judged
# (n/a, the reference model), was skipped.  Noise and improvements pass.
JUNIT = {REGRESSION: "failure", UNTESTED: "error", TOO_FEW: "skipped", NA: "skipped",
         REFERENCE: "skipped"}
# Piped output (a CI log, grep) keeps each verdict on its row's one line: four metric
# cells as long as "2.06 worse, untested: too few repeats" wrap at rich's default 80
# columns, and at 160.  Tables take only the width they need.
PIPED_WIDTH = 240


def _x_key(comparison: Comparison, scenario: str) -> str:
    """The name of the scenario's x axis ("clients", "idle"...), from either run."""
    for run in (comparison.base, comparison.new):
        if scenario in run["scenarios"]:
            return run["scenarios"][scenario].get("x", "x")
    return "x"


def _cell_text(cell: Cell) -> str:
    if cell.verdict == REFERENCE:
        return "ref"
    if cell.ratio is None:
        return "-"
    text = f"{cell.ratio:.2f}"
    if cell.verdict in (REGRESSION, IMPROVEMENT):
        word = "worse" if cell.verdict == REGRESSION else "better"
        return f"{text} {word}, p={cell.p_value:.3f}"
    if cell.verdict == UNTESTED:
        return f"{text} worse, untested: too few repeats"
    return f"{text} ~ (too few repeats)" if cell.verdict == TOO_FEW else f"{text} ~"


def _rank(cells: list[Cell]) -> int:
    """Index in SHOWN of the row's worst verdict; len(SHOWN) for a row with no change."""
    verdicts = {cell.verdict for cell in cells}
    return next((i for i, v in enumerate(SHOWN) if v in verdicts), len(SHOWN))


def render(comparison: Comparison, console: Console, show_all: bool = False) -> None:
    """The verdicts for people and CI logs: changes first, unchanged rows only counted."""
    c = comparison
    ref = (f"normalised by {c.reference} of the same run: (NEW/NEW {c.reference}) / "
           f"(BASE/BASE {c.reference}), PSS/conn raw" if c.reference
           else "raw NEW/BASE, not normalised")
    table = Table(title=f"{c.base['run_id']} (BASE) -> {c.new['run_id']} (NEW)",
                  caption=f"ratio {ref}; a change needs ratio past {c.threshold:g}x and "
                          f"one-sided Mann-Whitney p < {c.alpha:g}; ~ = noise")
    for name in ("scenario", "point", "model", *(m.short for m in METRICS), "note"):
        table.add_column(name)
    rows: dict[tuple, list[Cell]] = {}
    for cell in c.cells:
        rows.setdefault((cell.scenario, cell.x, cell.model, cell.protocol), []).append(cell)
    ranked = sorted(rows.items(), key=lambda row: _rank(row[1]))  # stable: run order kept
    hidden = 0
    for (scenario, x, model, protocol), cells in ranked:
        rank = _rank(cells)
        if rank == len(SHOWN) and not show_all:
            hidden += 1
            continue
        by_metric = {cell.metric: cell for cell in cells}
        texts = [(_cell_text(by_metric[m.key]), STYLE[by_metric[m.key].verdict])
                 if m.key in by_metric else ("", "") for m in METRICS]
        table.add_row(scenario if protocol == "echo" else f"{scenario} ({protocol})",
                      f"{_x_key(c, scenario)}={x}", model,
                      *(f"[{style}]{text}[/]" if style else text for text, style in texts),
                      "; ".join(cell.note for cell in cells if cell.note),
                      style="bold" if rank < SHOWN.index(IMPROVEMENT) else None)
    if table.row_count:
        console.print(table)
    if hidden:
        console.print(f"{hidden} unchanged row(s) not shown (--all shows every row)")
    console.print(f"{c.count(REGRESSION)} regression(s), {c.count(UNTESTED)} untested "
                  f"(too few repeats), {c.count(IMPROVEMENT)} improvement(s), "
                  f"{c.count(NOISE)} unchanged (~), {c.count(TOO_FEW)} too few repeats but "
                  f"not {c.untested_ratio:g}x worse (notes)")
    if c.count(UNTESTED):
        console.print(f"[bold red]untested:[/] worse by {c.untested_ratio:g}x or more, "
                      "but too few repeats to tell it from noise: this fails the run.")
    if c.count(UNTESTED) or c.count(TOO_FEW):
        n = repeats_needed(c.alpha)
        console.print(f"[yellow]note:[/] some changes could not be tested: at p < {c.alpha:g} "
                      f"a one-sided Mann-Whitney test needs {n} repeats per side "
                      f"(`muxbench bench --repeats {n}`).")
    console.print(f"exit status {c.exit_status:d}: {EXIT_MEANINGS[c.exit_status]}")


def to_json(comparison: Comparison) -> dict:
    c = comparison
    return {
        "base": c.base["run_id"], "new": c.new["run_id"], "reference": c.reference,
        "threshold": c.threshold, "alpha": c.alpha, "untested_ratio": c.untested_ratio,
        "summary": {v: c.count(v) for v in (REGRESSION, UNTESTED, IMPROVEMENT, NOISE,
                                             TOO_FEW, NA)},
        "exit_status": int(c.exit_status),
        "exit_statuses": {str(int(s)): meaning for s, meaning in EXIT_MEANINGS.items()},
        "cells": [asdict(cell) for cell in c.cells],
    }


def _junit_message(cell: Cell, comparison: Comparison) -> str:
    """What was found, with the figures that show it: ratio, p, medians (as measured)."""
    if cell.verdict == REFERENCE:
        return f"{cell.model} is the reference: every model's {cell.metric} is read against it"
    words = {REGRESSION: "regression", UNTESTED: "untested: too few repeats",
             TOO_FEW: "too few repeats to test", IMPROVEMENT: "improvement",
             NOISE: "no change", NA: "not judged"}
    parts = [words[cell.verdict]]
    if cell.ratio is not None:
        limit = (f"untested ratio {comparison.untested_ratio:g}x"
                 if cell.verdict in (UNTESTED, TOO_FEW) else f"threshold {comparison.threshold:g}x")
        parts.append(f"ratio {cell.ratio:.2f} ({limit}), "
                     f"p={cell.p_value:.3f} (alpha {comparison.alpha:g}), median "
                     f"BASE {cell.base_median:.4g} -> NEW {cell.new_median:.4g} "
                     f"({cell.n_base} vs {cell.n_new} repeats)")
    return ": ".join(parts) + (f"; {cell.note}" if cell.note else "")


def write_junit(comparison: Comparison, path: str | os.PathLike) -> None:
    """JUnit XML: one test case per (scenario, point, model, metric), one test suite."""
    c = comparison
    suite = ET.Element("testsuite", name="muxbench compare")
    properties = ET.SubElement(suite, "properties")
    for name, value in (("base", c.base["run_id"]), ("new", c.new["run_id"]),
                        ("reference", c.reference or "none"), ("threshold", c.threshold),
                        ("alpha", c.alpha), ("untested_ratio", c.untested_ratio),
                        ("exit_status", int(c.exit_status))):
        ET.SubElement(properties, "property", name=name, value=str(value))
    counts = dict.fromkeys(("failure", "error", "skipped"), 0)
    for cell in c.cells:
        case = ET.SubElement(suite, "testcase", classname=f"muxbench.{cell.scenario}.{cell.model}",
                             name=f"{cell.metric} @ {_x_key(c, cell.scenario)}={cell.x}")
        message = _junit_message(cell, c)
        if outcome := JUNIT.get(cell.verdict):
            counts[outcome] += 1
            ET.SubElement(case, outcome, message=message, type=cell.verdict).text = message
        else:
            ET.SubElement(case, "system-out").text = message
    totals = {"tests": str(len(c.cells)), "failures": str(counts["failure"]),
              "errors": str(counts["error"]), "skipped": str(counts["skipped"])}
    suite.attrib.update(totals)
    root = ET.Element("testsuites", name="muxbench", **totals)
    root.append(suite)
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


# -- the sub-command ---------------------------------------------------------------------

_ratio_threshold = float_where(lambda v: v > 1, "must be a ratio greater than 1, e.g. 1.25")
_untested_ratio = float_where(lambda v: 1 < v < math.inf, "must be a ratio greater than 1, e.g. 2")
_probability = float_where(lambda v: 0 < v < 1, "must be between 0 and 1, e.g. 0.01")


def add_judging_options(parser: argparse.ArgumentParser) -> None:
    """--threshold, --alpha, --untested-ratio and --reference: what counts as a change
    (shared with regress; judge_with() reads them)."""
    parser.add_argument("--threshold", type=_ratio_threshold, default=1.25,
                        help="smallest ratio (or 1/ratio) that can count (default: 1.25)")
    parser.add_argument("--alpha", type=_probability, default=0.01,
                        help="significance level of the Mann-Whitney test (default: 0.01)")
    parser.add_argument("--untested-ratio", type=_untested_ratio, default=UNTESTED_RATIO,
                        metavar="RATIO", help="with too few repeats to test, a change worse "
                        "by this ratio or more fails (exit status 3), a smaller one is a note; "
                        f"at least --threshold (default: {UNTESTED_RATIO:g})")
    parser.add_argument("--reference", default="epoll", help="model each run is normalised "
                        "by; 'none' compares raw values (same machine only) (default: epoll)")


def reference_of(args: argparse.Namespace) -> str | None:
    return None if args.reference == "none" else args.reference


def judge_with(args: argparse.Namespace, base: dict, new: dict) -> Comparison:
    """BASE against NEW under the judging options, or ResultsError with a one-line message."""
    if args.untested_ratio < args.threshold:
        raise ResultsError(f"--untested-ratio {args.untested_ratio:g} is below --threshold "
                           f"{args.threshold:g}: what it fails would not count as a change")
    reference = reference_of(args)
    comparison = compare_runs(base, new, reference, args.threshold, args.alpha,
                              args.untested_ratio)
    if not any(cell.verdict != NA for cell in comparison.cells):
        with_reference = f" (with a {reference} reference)" if reference else ""
        raise ResultsError("BASE and NEW have nothing in common: no point and metric "
                           f"measured in both{with_reference}")
    return comparison


def _epilog(width: int = 88) -> str:
    statuses = "\n".join(textwrap.fill(meaning, width, initial_indent=f"  {status:d} ",
                                       subsequent_indent="    ")
                         for status, meaning in EXIT_MEANINGS.items())
    return textwrap.fill(
        "Repeats: with p < 0.01 the test needs 5 repeats per side (5 vs 5 "
        "can reach p = 1/252 = 0.004; 3 vs 3 cannot go below 0.05). With too few, a change "
        "worse than --untested-ratio is marked 'untested: too few repeats' and fails the run; "
        "a smaller one, or any improvement, is shown as '~ (too few repeats)' and does not "
        "fail. Single repeats of unchanged code often differ by more than 2x (p99 most): "
        "gate on 5 repeats, not on 1.", width) + "\n" + textwrap.fill(
        "Output: regressions, then untested changes, improvements and notes; the unchanged "
        "rows are counted in one line (--all shows them). --json and --junit FILE give the "
        "same verdicts to machines.", width) + f"\nExit status:\n{statuses}"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Compare two runs point by point on CPU per message, p99 latency, throughput and\n"
        "memory per connection. Each ratio NEW/BASE is normalised by a reference model of\n"
        "the same run, so runs from different machines compare. A change counts only when\n"
        "the ratio passes --threshold AND a one-sided Mann-Whitney U test over the repeats\n"
        "gives p < --alpha; anything else is shown as ~ (noise). Memory per connection\n"
        "does not scale with machine speed: it is compared as measured, with values under\n"
        "8 KiB counted as 8 KiB (below that it is sampling noise).")
    parser.epilog = _epilog()
    parser.add_argument("base", metavar="BASE", help="baseline run: directory, results.json "
                        "or run id under --root")
    parser.add_argument("new", metavar="NEW", help="the run to judge, same forms as BASE")
    parser.add_argument("--root", default="results", help="where run ids are looked up "
                        "(default: results)")
    add_judging_options(parser)
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument("--junit", metavar="FILE",
                        help="also write the verdicts as JUnit XML, one test case per cell")
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--all", dest="show_all", action="store_true",
                       help="show every row, the unchanged ones too")
    # The former name of what is now the default.
    shown.add_argument("--changes-only", dest="show_all", action="store_false",
                       help=argparse.SUPPRESS)


def load_pair(base: str, new: str, root: str) -> tuple[dict, dict]:
    """Both runs, or ResultsError with a one-line message."""
    return load_results(results_file(base, root)), load_results(results_file(new, root))


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        base, new = load_pair(args.base, args.new, args.root)
        comparison = judge_with(args, base, new)
        if args.junit:
            try:
                write_junit(comparison, args.junit)
            except OSError as exc:
                raise ResultsError(f"cannot write {args.junit}: {exc.strerror}") from None
    except ResultsError as exc:
        print(f"muxbench compare: {exc}", file=sys.stderr)
        return ExitStatus.BAD_INPUT
    for name, results in (("BASE", base), ("NEW", new)):
        if results["status"] != "complete":
            print(f"muxbench compare: note: {name} run {results['run_id']} is "
                  f"{results['status']}, not complete", file=sys.stderr)
    if args.json:
        print(json.dumps(to_json(comparison), indent=1), file=out)
    else:
        render(comparison, Console(file=out, width=None if out.isatty() else PIPED_WIDTH),
               args.show_all)
    return comparison.exit_status
