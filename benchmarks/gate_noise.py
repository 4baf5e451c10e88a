"""How far apart do the regression gate's two sides land when nothing changed?

Runs `muxbench regress --base HEAD` (HEAD against HEAD: the same code on both
sides) N times, or reads the merged runs earlier gate runs left behind, and
prints, per (scenario, metric), the worst ratio NEW/BASE over every model and
run -- raw and normalised by epoll -- and how many cells a gate would have
failed.  A pair belongs in bench/gate/regress.py's GATED only when its worst ratio
stays well inside the gate's threshold (1.25x).

usage: python benchmarks/gate_noise.py [--runs 3] [--out results/gate-noise] [DIR ...]
  DIR: a `muxbench regress --out` directory; its runs are read, none are made.
Exit status: 0 done, 2 no pair of runs found or a gate run that measured nothing,
130 interrupted (Ctrl-C), the gate run under way stopped and its worktree removed.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# benchmarks/ is sys.path[0] when a benchmark runs as a script.
from common import ROOT, run_main

from bench.gate.judge import NA, REFERENCE, REGRESSION, TOO_FEW, UNTESTED, compare_runs
from bench.gate.regress import GATED, STOP_GRACE
from bench.results import ResultsError, load_results

# Importable once common has put the project on sys.path.
from muxbench import procs
from muxbench.argtypes import positive_int

# A gate told to stop first gives its bench run STOP_GRACE to stop, then removes a worktree.
GATE_STOP_GRACE = STOP_GRACE + 10.0


def pairs(directory: Path) -> list[tuple[dict, dict]]:
    """(base, head) merged runs of each gate run a `regress --out` directory holds."""
    out = []
    for head in sorted(directory.glob("*-head/results.json")):
        base = head.parent.with_name(head.parent.name.removesuffix("-head") + "-base")
        if (base / "results.json").is_file():
            out.append((load_results(base), load_results(head)))
    return out


def spread(runs: list[tuple[dict, dict]], reference: str | None) -> dict[tuple, dict]:
    """{(scenario, metric): worst ratio, median |log ratio|, alarms, cells} over the runs."""
    ratios: dict[tuple, list[float]] = defaultdict(list)
    alarms: dict[tuple, int] = defaultdict(int)
    for base, head in runs:
        for cell in compare_runs(base, head, reference).cells:
            if cell.verdict in (NA, REFERENCE) or cell.ratio is None or cell.ratio <= 0:
                continue
            key = (cell.scenario, cell.metric)
            ratios[key].append(cell.ratio)
            alarms[key] += cell.verdict in (REGRESSION, UNTESTED, TOO_FEW)
    return {key: {"worst": max(max(r, 1 / r) for r in values),
                  "typical": math.exp(statistics.median(abs(math.log(r)) for r in values)),
                  "alarms": alarms[key], "cells": len(values)}
            for key, values in sorted(ratios.items())}


def gate_runs(count: int, out: Path) -> None:
    for i in range(count):
        print(f"gate_noise: unchanged run {i + 1}/{count} (HEAD against HEAD)", flush=True)
        # Exit 1 or 3 is a finding here, not a failure: only "measured nothing" stops us.
        gate = procs.spawn([sys.executable, "-m", "bench.gate.regress", "--base", "HEAD",
                            "--out", str(out), "--json"], cwd=ROOT, stdout=subprocess.DEVNULL)
        try:
            status = gate.wait()
        finally:
            # Interrupted: SIGTERM lets the gate stop its bench run and remove its worktree.
            procs.stop_group(gate, GATE_STOP_GRACE)
        if status not in (0, 1, 3):
            raise ResultsError(f"gate run {i + 1} exited {status}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="*", type=Path, metavar="DIR",
                        help="read the runs of earlier `muxbench regress --out DIR`")
    parser.add_argument("--runs", type=positive_int, default=3,
                        help="unchanged gate runs to make (default: 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "gate-noise",
                        help="where those runs go (default: results/gate-noise)")
    args = parser.parse_args()
    try:
        if not args.dirs:
            gate_runs(args.runs, args.out)
        runs = [pair for d in args.dirs or [args.out] for pair in pairs(d)]
        if not runs:
            raise ResultsError("no merged base and head runs found")
    except ResultsError as exc:
        print(f"gate_noise: {exc}", file=sys.stderr)
        return 2
    raw, norm = spread(runs, None), spread(runs, "epoll")
    print(f"{len(runs)} unchanged gate run(s); worst and typical ratio NEW/BASE over every "
          "model; alarms: cells past the threshold, regressions or too few repeats to test")
    print(f"{'scenario':16} {'metric':20} {'cells':>5}  {'raw worst':>9} {'typical':>7} "
          f"{'alarms':>6}  {'/epoll worst':>12} {'alarms':>6}  gated")
    for key, r in raw.items():
        n = norm.get(key)
        epoll = f"{n['worst']:12.2f} {n['alarms']:6d}" if n else f"{'-':>12} {'-':>6}"
        print(f"{key[0]:16} {key[1]:20} {r['cells']:5d}  {r['worst']:9.2f} {r['typical']:7.3f} "
              f"{r['alarms']:6d}  {epoll}  {'yes' if key in GATED else 'no'}")
    return 0


if __name__ == "__main__":
    run_main("gate_noise", main)
