"""`muxbench regress`: does the working tree cost more than a base revision, on this machine?

Absolute figures swing between days, machines and neighbours, so a baseline
measured elsewhere says more about the weather than the code.  The gate
measures both sides here and now, as `asv continuous` does: the base revision
is checked out beside the working tree (`git worktree add`, removed at the
end), and short runs of the two alternate -- base, head, head, base, ... --
each a fresh `muxbench bench` process started in its own tree, so that tree's
code is what is imported and what the servers run.  Each side's runs are
merged into one results set, repeat i of both sides measured next to each
other, and judged by bench/gate/judge.py.

Only the (scenario, metric) pairs in GATED fail the gate; the rest are shown,
marked as not gated.  Values are compared raw (--reference none), as both
sides ran on this machine, interleaved.  A stored run can stand in for the
base (`--baseline DIR`), for a CI that keeps one as an artifact.

Exit status as `muxbench compare`: 0 no regression in a gated metric, 1 a
regression in one, 2 unusable input (unknown --base, a bench run that wrote
nothing), 3 a gated metric not tested: too few valid repeats (a busy machine
makes trials invalid), or a large change too few repeats could not test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console

from bench.gate import compare
from bench.gate.judge import (
    NA,
    NOISE,
    STATUS,
    TOO_FEW,
    UNTESTED,
    Cell,
    Comparison,
    min_p_value,
)
from bench.results import (
    TRIAL_STATUSES,
    ResultsError,
    group_points,
    load_results,
    new_run_id,
    point_latest,
    resolve_run,
    write_results_atomic,
)
from muxbench import ROOT, procs
from muxbench.argtypes import number_in, positive_int

# What each side runs per repeat: every model serving 50 clients that offer 2,000
# messages/s in all, open loop.  At a fixed offered rate the load generator is not the
# bottleneck (closed-loop echo saturates it on two CPUs and its trials come out
# invalid), so CPU per message is the server's own cost; at 2,000/s a message costs
# 35-65 us, so a slowdown of tens of us shows (at cpu_vs_clients' 500/s, 70-130 us of
# wake-ups hid half of it).  10 trials: 5 repeats x 2 sides in 2-3 minutes here.
SCENARIOS = ("open_loop",)
SUITE = "quick"
REPEATS = 5  # 5 vs 5 is the fewest that reaches p < 0.01 (1/252) in a Mann-Whitney test
# A trial whose load generator fell behind (a busy neighbour took its CPU) is invalid
# and judge.py leaves it out: measured again, at most this often, right after its run,
# so that a busy machine costs time rather than repeats.
RETRIES = 2
# A busy spell can outlast those retries.  Once every repeat has run, what is still
# invalid is measured again, both sides in turn, until none is or this many seconds
# have passed (`--retry-budget`): a gate that could not measure exits 3, never 0.
RETRY_BUDGET_S = 240.0
STOP_GRACE = 20.0  # seconds an interrupted bench run has to stop its servers

# (scenario, metric) pairs whose verdict fails the gate, chosen from their spread on
# unchanged code: `python benchmarks/gate_noise.py` prints the worst ratio NEW/BASE of
# any model over repeated HEAD-against-HEAD gate runs (figures in docs/gate.md).  CPU
# per message moved 1.07x typically, 1.36x at worst, with no cell past the threshold
# AND p < 0.01; p99 swung up to 4.6x and is shown, not gated; throughput at a fixed
# offered rate is the rate; PSS per connection is mostly under its 8 KiB floor.
GATED = frozenset({("open_loop", "cpu_per_msg_us")})

Runner = Callable[[Path, Path, list[str]], Path]


def gated(scenario: str, metric: str) -> bool:
    """True when this cell's verdict decides the exit status (a lost point always does)."""
    return metric == STATUS or (scenario, metric) in GATED


def apply_gate(comparison: Comparison) -> None:
    """Let only gated cells decide the exit status.

    Any other cell that would fail the comparison is shown as noise, with a
    note.  A gated cell with too few valid repeats to test -- a busy machine
    made its trials invalid -- is marked untested whatever its ratio (exit 3):
    a gate that could not measure must not pass as if it had.
    """
    tried = [set(group_points(run, TRIAL_STATUSES)) for run in (comparison.base,
                                                                 comparison.new)]
    gated_scenarios = {scenario for scenario, _ in GATED}
    # judge.py makes no cell for a point with no valid trial on either side: nothing
    # to compare, and so nothing to fail.  For a gated point that is a gate that did
    # not measure.
    judged = {(c.scenario, c.model, c.protocol, c.x) for c in comparison.cells}
    comparison.cells += [Cell(*key, STATUS, NA) for key in sorted(tried[0] & tried[1], key=str)
                         if key[0] in gated_scenarios and key not in judged]
    for cell in comparison.cells:
        key = (cell.scenario, cell.model, cell.protocol, cell.x)
        if cell.metric == STATUS:
            # A point both sides ran with no valid trial on one of them.
            untestable = (cell.verdict == NA and cell.scenario in gated_scenarios
                          and all(key in keys for keys in tried))
        elif gated(cell.scenario, cell.metric):
            untestable = (cell.verdict in (NOISE, TOO_FEW, NA)
                          and min_p_value(cell.n_base, cell.n_new) >= comparison.alpha)
        else:
            if _fails(comparison, cell):
                ratio = f" {cell.ratio:.2f}x" if cell.ratio is not None else ""
                cell.note = _add(cell.note, f"{cell.verdict}{ratio}, not gated")
                cell.verdict = NOISE
            continue
        if untestable:
            cell.note = _add(cell.note, f"gated, and {cell.n_base} vs {cell.n_new} valid "
                                        "repeats cannot be tested")
            cell.verdict = UNTESTED


def _add(note: str, more: str) -> str:
    return "; ".join(filter(None, [note, more]))


def _fails(comparison: Comparison, cell: Cell) -> bool:
    """Whether this cell alone makes the comparison fail, by judge.py's own rule."""
    return dataclasses.replace(comparison, cells=[cell]).exit_status != 0


# -- the two trees -------------------------------------------------------------------------

def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise ResultsError(f"git {' '.join(args)}: "
                           f"{(out.stderr.strip().splitlines() or ['failed'])[-1]}")
    return out.stdout.strip()


@contextlib.contextmanager
def worktree(repo: Path, ref: str) -> Iterator[Path]:
    """REF of REPO checked out (detached) in a temporary directory, removed on the way out."""
    try:
        sha = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except ResultsError:
        raise ResultsError(f"--base {ref}: no such commit in {repo}") from None
    parent = Path(tempfile.mkdtemp(prefix="muxbench-base-"))
    tree = parent / "tree"
    try:
        _git(repo, "worktree", "add", "--detach", "--quiet", str(tree), sha)
        yield tree
    finally:
        with contextlib.suppress(ResultsError):
            _git(repo, "worktree", "remove", "--force", str(tree))
        shutil.rmtree(parent, ignore_errors=True)
        with contextlib.suppress(ResultsError):
            _git(repo, "worktree", "prune")


def bench_run(tree: Path, out: Path, argv: list[str]) -> Path:
    """`muxbench bench ARGV --out OUT` run from TREE's code; the run directory it wrote.

    `python -m` puts the working directory first on sys.path, ahead of the
    editable install, and the harness starts its servers with cwd set to the
    root of the `bench` package it imported: both are TREE.
    """
    before = _latest(out)
    cli = "muxbench.cli" if (tree / "muxbench" / "cli.py").exists() else "bench.cli"
    cmd = [sys.executable, "-m", cli, "bench", *argv, "--out", str(out.resolve())]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    proc = procs.spawn(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL)
    try:
        proc.wait()
    finally:
        # Interrupted: SIGTERM lets the run stop its servers and save what it has;
        # then nothing of it may outlive the gate.
        procs.stop_group(proc, STOP_GRACE)
    after = _latest(out)
    if after is None or after == before:
        raise ResultsError(f"`muxbench bench` in {tree} (exit status {proc.returncode}) "
                           f"wrote no new run under {out}")
    return after


def _latest(root: Path) -> Path | None:
    with contextlib.suppress(ResultsError):
        return resolve_run(None, root)
    return None


# -- merging the runs of one side ----------------------------------------------------------

def merge(runs: list[dict], run_id: str) -> dict:
    """One results set from single-repeat runs: run i's trials become repeat i.

    judge.py divides each repeat by its reference model's value in the same
    repeat, and the base's and head's repeat i ran side by side: the repeat
    numbers must say which runs belong together.
    """
    if not runs:
        raise ResultsError("no run to merge")
    merged = copy.deepcopy(runs[0])
    merged.update(run_id=run_id, trials=[],
                  status="complete" if all(r["status"] == "complete" for r in runs)
                  else "interrupted", finished_at=runs[-1].get("finished_at"))
    for repeat, run in enumerate(runs):
        merged["scenarios"].update(copy.deepcopy(run["scenarios"]))
        merged["trials"] += [{**copy.deepcopy(t), "repeat": repeat} for t in run["trials"]]
    return merged


def _check_commit(run: dict, tree: Path) -> None:
    """Refuse a run that reports another commit than its tree's: other code was measured."""
    want, got = _git(tree, "rev-parse", "HEAD"), run["environment"].get("git_commit") or ""
    if got.removesuffix("-dirty") != want:
        raise ResultsError(f"the run from {tree} reports commit {got or 'none'}, not {want}: "
                           "it did not run that tree's code")


def _point(trial: dict) -> tuple:
    return (trial["scenario"], trial["model"], trial["protocol"],
            json.dumps(trial["point"], sort_keys=True))


def _run(tree: Path, out: Path, runner: Runner, scenarios: list[str],
         models: list[str] | None = None) -> dict:
    argv = ["--suite", SUITE, "--repeats", "1", "--scenarios", ",".join(scenarios)]
    run = load_results(runner(tree, out, argv + (["--models", ",".join(models)] if models
                                                 else [])))
    _check_commit(run, tree)
    return run


def _invalid(run: dict) -> dict[str, set[str]]:
    """{scenario: models} of RUN's invalid trials."""
    invalid: dict[str, set[str]] = {}
    for trial in run["trials"]:
        if trial["status"] == "invalid":
            invalid.setdefault(trial["scenario"], set()).add(trial["model"])
    return invalid


def _retry(run: dict, tree: Path, out: Path, runner: Runner) -> None:
    """Measure RUN's invalid points again, one run per scenario; keep the valid trials."""
    for scenario, models in _invalid(run).items():
        again = _run(tree, out, runner, [scenario], sorted(models))
        valid = {_point(t): t for t in again["trials"] if t["status"] == "ok"}
        run["trials"] = [valid.pop(_point(t), t) if t["status"] == "invalid" else t
                         for t in run["trials"]]


def _top_up(runs: dict[str, list[dict]], trees: dict[str, Path], out: Path, runner: Runner,
            deadline: float, say: Callable[[str], None]) -> None:
    """Retry what is still invalid, repeat by repeat and side by side, until the deadline."""
    while time.monotonic() < deadline:
        pending = [(side, run) for repeat in zip(*runs.values(), strict=True)
                   for side, run in zip(runs, repeat, strict=True) if _invalid(run)]
        if not pending:
            return
        say(f"{len(pending)} runs still hold invalid trials: measuring them again")
        for side, run in pending:
            if time.monotonic() >= deadline:
                break
            _retry(run, trees[side], out / "runs" / side, runner)
    say("retry budget spent: what is still invalid stays so")


def measure(trees: dict[str, Path], out: Path, repeats: int, runner: Runner,
            say: Callable[[str], None], retry_budget: float = RETRY_BUDGET_S
            ) -> dict[str, dict]:
    """{side: merged run} of REPEATS runs per side, alternating which side goes first."""
    runs: dict[str, list[dict]] = {side: [] for side in trees}
    stamp = new_run_id("regress")
    for repeat in range(repeats):
        order = list(trees) if repeat % 2 == 0 else list(reversed(trees))
        for side in order:
            run = _run(trees[side], out / "runs" / side, runner, list(SCENARIOS))
            for _ in range(RETRIES):
                _retry(run, trees[side], out / "runs" / side, runner)
            lost = sum(t["status"] != "ok" for t in run["trials"])
            say(f"repeat {repeat + 1}/{repeats} {side}: {len(run['trials'])} trials, "
                f"{lost} not ok ({run['run_id']})")
            runs[side].append(run)
    _top_up(runs, trees, out, runner, time.monotonic() + retry_budget, say)
    merged = {side: merge(side_runs, f"{stamp}-{side}") for side, side_runs in runs.items()}
    for run in merged.values():
        write_results_atomic(out / run["run_id"] / "results.json", run)
    point_latest(out, out / merged["head"]["run_id"])
    return merged


# -- the command -----------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0]
    parser.epilog = __doc__.rsplit("\n\n", 1)[1] + "\nSee docs/gate.md."
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--base", default="HEAD", metavar="REF",
                       help="git revision to measure the working tree against (default: "
                            "HEAD, so uncommitted changes are judged; CI passes the PR's base)")
    where.add_argument("--baseline", metavar="DIR",
                       help="judge against this stored run instead of measuring a base")
    parser.add_argument("--repeats", type=positive_int, default=REPEATS,
                        help=f"runs per side (default: {REPEATS})")
    parser.add_argument("--retry-budget", type=number_in(float, 0, 3600), default=RETRY_BUDGET_S,
                        metavar="SECONDS",
                        help="once every repeat has run, measure again for at most this "
                             "long what a busy machine left invalid (default: "
                             f"{RETRY_BUDGET_S:g})")
    parser.add_argument("--out", default="results/regress", metavar="DIR",
                        help="where the runs and the merged base and head go; DIR/latest "
                             "is the head (default: results/regress)")
    compare.add_judging_options(parser)
    # Both sides are measured on this machine, interleaved: raw values compare, and a
    # change in code every Python model shares (the reactor) is not divided away.
    parser.set_defaults(reference="none")
    parser.add_argument("--all", action="store_true",
                        help="show the unchanged rows too, not only the changes")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    parser.add_argument("--junit", metavar="FILE",
                        help="also write the verdicts as JUnit XML, one test case per cell")


def regress(args: argparse.Namespace, runner: Runner = bench_run, repo: Path = ROOT) -> int:
    """Measure (or load) both sides, judge, show; the exit status."""
    console = Console(width=None if sys.stdout.isatty() else 160)

    def say(text: str) -> None:
        print(f"muxbench regress: {text}", file=sys.stderr, flush=True)

    out = Path(args.out)
    try:
        if args.baseline:
            base = load_results(args.baseline)
            new = measure({"head": repo}, out, args.repeats, runner, say,
                          args.retry_budget)["head"]
        else:
            with worktree(repo, args.base) as tree:
                say(f"base {args.base} checked out in {tree}")
                sides = measure({"base": tree, "head": repo}, out, args.repeats, runner,
                                say, args.retry_budget)
            base, new = sides["base"], sides["head"]
        comparison = compare.judge_with(args, base, new)
        apply_gate(comparison)
        if args.junit:
            _write_junit(comparison, Path(args.junit))
    except ResultsError as exc:
        print(f"muxbench regress: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(compare.to_json(comparison), indent=1))
    else:
        compare.render(comparison, console, show_all=args.all)
    return int(comparison.exit_status)


def _write_junit(comparison: Comparison, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        compare.write_junit(comparison, path)
    except OSError as exc:
        raise ResultsError(f"cannot write {path}: {exc.strerror or exc}") from None


def stop_on_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, once, so the finally blocks run.

    A CI cancels with SIGTERM, and a background job starts with SIGINT
    ignored: both must still stop the bench run and remove the worktree.
    """
    def interrupted(signum, frame):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up must not be cut short
        raise KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupted)


def run(args: argparse.Namespace) -> int:
    stop_on_signals()
    return regress(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate.regress")
    configure(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        print("muxbench regress: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
