"""`muxbench compare BASE NEW`: which differences between two runs are real changes.

Absolute times swing 3x between identical runs on these machines, so a raw
NEW/BASE ratio says more about the weather than the code.  The judging lives in
bench/judge.py (ratios normalised by a reference model of the same run, a
threshold AND a one-sided Mann-Whitney U test, the two tests pyperf and asv
apply); this module is the command: a rich table for people, --json for
machines, and the exit status (1 regression, 2 unusable input).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TextIO

from rich.console import Console
from rich.table import Table

from bench.judge import (
    IMPROVEMENT,
    METRICS,
    NA,
    NOISE,
    REFERENCE,
    REGRESSION,
    TOO_FEW,
    Cell,
    Comparison,
    compare_runs,
)
from bench.results import ResultsError, load_results, results_file
from servers.argtypes import float_where

STYLE = {REGRESSION: "bold red", IMPROVEMENT: "green", TOO_FEW: "yellow", NA: "dim",
         REFERENCE: "dim", NOISE: ""}


def _cell_text(cell: Cell) -> str:
    if cell.verdict == REFERENCE:
        return "ref"
    if cell.ratio is None:
        return "-"
    text = f"{cell.ratio:.2f}"
    if cell.verdict in (REGRESSION, IMPROVEMENT):
        word = "worse" if cell.verdict == REGRESSION else "better"
        return f"{text} {word}, p={cell.p_value:.3f}"
    return f"{text} ~ (too few repeats)" if cell.verdict == TOO_FEW else f"{text} ~"


def _worst(cells: list[Cell]) -> str:
    for verdict in (REGRESSION, TOO_FEW, IMPROVEMENT):
        if any(c.verdict == verdict for c in cells):
            return verdict
    return NOISE


def render(comparison: Comparison, console: Console, changes_only: bool = False) -> None:
    c = comparison
    ref = (f"normalised by {c.reference} of the same run: (NEW/NEW {c.reference}) / "
           f"(BASE/BASE {c.reference}), PSS/conn raw" if c.reference
           else "raw NEW/BASE, not normalised")
    table = Table(title=f"{c.base['run_id']} (BASE) -> {c.new['run_id']} (NEW)",
                  caption=f"ratio {ref}; a change needs ratio past {c.threshold:g}x and "
                          f"one-sided Mann-Whitney p < {c.alpha:g}; ~ = noise")
    for name in ("scenario", "point", "model", *(m.label for m in METRICS), "note"):
        table.add_column(name)
    rows: dict[tuple, list[Cell]] = {}
    for cell in c.cells:
        rows.setdefault((cell.scenario, cell.x, cell.model, cell.protocol), []).append(cell)
    for (scenario, x, model, protocol), cells in rows.items():
        worst = _worst(cells)
        if changes_only and worst == NOISE:
            continue
        by_metric = {cell.metric: cell for cell in cells}
        texts = [(_cell_text(by_metric[m.key]), STYLE[by_metric[m.key].verdict])
                 if m.key in by_metric else ("", "") for m in METRICS]
        x_key = c.base["scenarios"].get(scenario, {}).get("x", "x")
        table.add_row(scenario if protocol == "echo" else f"{scenario} ({protocol})",
                      f"{x_key}={x}", model,
                      *(f"[{style}]{text}[/]" if style else text for text, style in texts),
                      "; ".join(cell.note for cell in cells if cell.note),
                      style="bold" if worst == REGRESSION else None)
    if table.row_count:
        console.print(table)
    summary = (f"{c.count(REGRESSION)} regression(s), {c.count(IMPROVEMENT)} improvement(s), "
               f"{c.count(NOISE)} unchanged (~), {c.count(TOO_FEW)} too few repeats")
    console.print(summary)
    if c.count(TOO_FEW):
        console.print(f"[yellow]note:[/] some changes could not be tested: at p < {c.alpha:g} "
                      "a one-sided Mann-Whitney test needs about 5 repeats per side "
                      "(`muxbench bench --repeats 5`).")


def to_json(comparison: Comparison) -> dict:
    c = comparison
    return {
        "base": c.base["run_id"], "new": c.new["run_id"], "reference": c.reference,
        "threshold": c.threshold, "alpha": c.alpha,
        "summary": {v: c.count(v) for v in (REGRESSION, IMPROVEMENT, NOISE, TOO_FEW, NA)},
        "exit_status": c.exit_status,
        "cells": [asdict(cell) for cell in c.cells],
    }


# -- the sub-command ---------------------------------------------------------------------

_ratio_threshold = float_where(lambda v: v > 1, "must be a ratio greater than 1, e.g. 1.25")
_probability = float_where(lambda v: 0 < v < 1, "must be between 0 and 1, e.g. 0.01")


def add_judging_options(parser: argparse.ArgumentParser) -> None:
    """--threshold, --alpha and --reference: what counts as a change (shared with regress)."""
    parser.add_argument("--threshold", type=_ratio_threshold, default=1.25,
                        help="smallest ratio (or 1/ratio) that can count (default: 1.25)")
    parser.add_argument("--alpha", type=_probability, default=0.01,
                        help="significance level of the Mann-Whitney test (default: 0.01)")
    parser.add_argument("--reference", default="epoll", help="model each run is normalised "
                        "by; 'none' compares raw values (same machine only) (default: epoll)")


def reference_of(args: argparse.Namespace) -> str | None:
    return None if args.reference == "none" else args.reference


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
    parser.epilog = (
        "Repeats: with p < 0.01 the test needs about 5 repeats per side (5 vs 5 can reach\n"
        "p = 1/252 = 0.004; 3 vs 3 cannot go below 0.05). A change past the threshold with\n"
        "too few repeats is shown as '~ (too few repeats)' and does not fail.\n"
        "Exit status: 0 no regression (improvements are fine), 1 a significant regression\n"
        "or a point with no ok trial and a failed one in NEW (only invalid trials -- the\n"
        "load generator saturated -- do not count), 2 unusable input (missing or malformed\n"
        "file, other schema version, nothing in common).")
    parser.add_argument("base", metavar="BASE", help="baseline run: directory, results.json "
                        "or run id under --root")
    parser.add_argument("new", metavar="NEW", help="the run to judge, same forms as BASE")
    parser.add_argument("--root", default="results", help="where run ids are looked up "
                        "(default: results)")
    add_judging_options(parser)
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument("--changes-only", action="store_true",
                        help="show only rows with a change or too few repeats")


def load_pair(base: str, new: str, root: str) -> tuple[dict, dict]:
    """Both runs, or ResultsError with a one-line message."""
    return load_results(results_file(base, root)), load_results(results_file(new, root))


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    reference = reference_of(args)
    try:
        base, new = load_pair(args.base, args.new, args.root)
        comparison = compare_runs(base, new, reference, args.threshold, args.alpha)
        if not any(cell.verdict != NA for cell in comparison.cells):
            raise ResultsError("BASE and NEW have nothing in common: no point and metric "
                               f"measured in both (with a {reference} reference)")
    except ResultsError as exc:
        print(f"muxbench compare: {exc}", file=sys.stderr)
        return 2
    for name, results in (("BASE", base), ("NEW", new)):
        if results["status"] != "complete":
            print(f"muxbench compare: note: {name} run {results['run_id']} is "
                  f"{results['status']}, not complete", file=sys.stderr)
    if args.json:
        print(json.dumps(to_json(comparison), indent=1), file=out)
    else:
        # Piped output keeps whole rows rather than wrapping at rich's default 80 columns.
        render(comparison, Console(file=out, width=None if out.isatty() else 160),
               args.changes_only)
    return comparison.exit_status
