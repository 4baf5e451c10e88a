"""Judging one run against another: per point, model and metric, is it a real change?

Used by `muxbench compare` (bench/gate/compare.py) and `muxbench regress` (bench/gate/regress.py).
Absolute times swing 3x between identical runs on these machines, so a raw
NEW/BASE ratio says more about the weather than the code.  Each model is read
relative to a reference model measured in the same run at the same point, so a
machine that is uniformly slower cancels out: ratio = (NEW/NEW_ref) /
(BASE/BASE_ref).  A change counts only when that ratio passes a threshold AND a
one-sided Mann-Whitney U test over the repeats (each divided by the reference's
value in the same repeat, see _per_repeat) gives p < alpha.

With too few repeats the test cannot reach alpha whatever the data, so a
change past the threshold is neither confirmed nor ruled out.  Such a change
stays a note (TOO_FEW) unless it is worse by the large untested ratio or more:
then it is UNTESTED, which fails the run under its own exit status, so that a
3x slowdown measured once is never passed as noise.  ExitStatus and
EXIT_MEANINGS are the one definition of what the commands exit with.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import IntEnum

from scipy.stats import mannwhitneyu

from bench.metrics import CPU_PER_MSG, DERIVED_P99, DERIVED_THROUGHPUT, PSS_PER_CONN, Metric
from bench.results import TRIAL_STATUSES, group_points, metric

REGRESSION, IMPROVEMENT, NOISE, TOO_FEW, UNTESTED, NA, REFERENCE = (
    "regression", "improvement", "noise", "too-few", "untested", "n/a", "reference")

# Worse by this much, a change fails even when too few repeats can test it.  Single
# repeats of unchanged code differ by more than that (p99 up to 6x, CPU/msg up to 5x,
# normalised): a run of one repeat then exits UNTESTED, "cannot tell", never "fine".
UNTESTED_RATIO = 2.0


class ExitStatus(IntEnum):
    OK = 0
    REGRESSION = 1
    BAD_INPUT = 2
    UNTESTED = 3


EXIT_MEANINGS = {
    ExitStatus.OK: "no regression (improvements and notes do not fail)",
    ExitStatus.REGRESSION: "a significant regression, or a point with no ok trial and a "
                           "failed one in NEW (invalid trials, where the load generator "
                           "saturated, do not count)",
    ExitStatus.BAD_INPUT: "unusable input: a missing or malformed file, another schema "
                          "version, nothing in common, a bad option",
    ExitStatus.UNTESTED: "no tested regression, but a change worse than the untested ratio "
                         "that too few repeats could not test",
}


# What the gate judges, from the catalogue (bench/metrics.py: how each is read).
METRICS = (CPU_PER_MSG, DERIVED_P99, DERIVED_THROUGHPUT, PSS_PER_CONN)
STATUS = "status"  # pseudo-metric of a point that vanished or broke in NEW


@dataclass
class Cell:
    """One (scenario point, model, metric) judged."""

    scenario: str
    model: str
    protocol: str
    x: object
    metric: str
    verdict: str
    ratio: float | None = None
    p_value: float | None = None
    base_median: float | None = None
    new_median: float | None = None
    n_base: int = 0
    n_new: int = 0
    note: str = ""


@dataclass
class Comparison:
    base: dict
    new: dict
    reference: str | None
    threshold: float
    alpha: float
    cells: list[Cell]
    untested_ratio: float = UNTESTED_RATIO

    def count(self, verdict: str) -> int:
        return sum(c.verdict == verdict for c in self.cells)

    @property
    def exit_status(self) -> ExitStatus:
        """A tested regression first: it is the stronger finding (1 wins over 3)."""
        if self.count(REGRESSION):
            return ExitStatus.REGRESSION
        return ExitStatus.UNTESTED if self.count(UNTESTED) else ExitStatus.OK


def min_p_value(n_base: int, n_new: int) -> float:
    """The smallest one-sided exact Mann-Whitney p that n_base vs n_new repeats can reach."""
    return 1.0 / math.comb(n_base + n_new, n_base)


def repeats_needed(alpha: float) -> int:
    """The fewest repeats per side with which the Mann-Whitney test can reach p < alpha."""
    n = 1
    while min_p_value(n, n) >= alpha:
        n += 1
    return n


def _values(trials: list[dict] | None, m: Metric) -> list[float]:
    return [max(v, m.floor) for v in (metric(t, m.path) for t in trials or ()) if v is not None]


def _per_repeat(trials: list[dict], ref_trials: list[dict] | None, m: Metric) -> list[float]:
    """Each repeat's value over the reference's value in the same repeat.

    Trials of one repeat are interleaved, so the reference was measured right
    beside the model: machine drift between repeats cancels, and the
    reference's own noise is carried into the test instead of being frozen
    into one median (a baseline whose reference median happened to be high
    would otherwise make every model at that point look better in it, in
    every later comparison, confirmed or not).  A repeat whose reference has
    no value is divided by the reference's median.
    """
    ref = {t["repeat"]: max(v, m.floor) for t in ref_trials or ()
           if (v := metric(t, m.path)) is not None}
    median = statistics.median(ref.values())  # > 0: checked by the caller
    out = []
    for t in trials:
        value, own = metric(t, m.path), ref.get(t["repeat"])
        if value is not None:
            out.append(max(value, m.floor) / (own if own and own > 0 else median))
    return out


def _past(ratio: float, limit: float) -> bool:
    """The ratio is at least `limit` away from 1, either way."""
    return not 1 / limit < ratio < limit


def _judge(cell: Cell, ratio: float, base: list[float], new: list[float],
           lower_is_better: bool, comparison: Comparison) -> Cell:
    """Verdict from the ratio of medians and a one-sided Mann-Whitney test on the repeats."""
    cell.ratio = ratio
    direction = "greater" if ratio >= 1 else "less"
    cell.p_value = float(mannwhitneyu(new, base, alternative=direction).pvalue)
    worse = (ratio > 1) == lower_is_better
    if not _past(ratio, comparison.threshold):
        cell.verdict = NOISE
    elif min_p_value(len(base), len(new)) >= comparison.alpha:
        # Untestable: a large slowdown must not pass as noise; improvements never fail.
        large = _past(ratio, comparison.untested_ratio)
        cell.verdict = UNTESTED if worse and large else TOO_FEW
    elif cell.p_value < comparison.alpha:
        cell.verdict = REGRESSION if worse else IMPROVEMENT
    else:
        cell.verdict = NOISE
    return cell


def _compare_point(key: tuple, base_trials: list[dict], new_trials: list[dict],
                   base_ref: list[dict] | None, new_ref: list[dict] | None,
                   comparison: Comparison) -> list[Cell]:
    scenario, model, protocol, x = key
    cells = []
    for m in METRICS:
        base, new = _values(base_trials, m), _values(new_trials, m)
        if not any(base + new):  # not measured here (None), or nothing to measure (idle: 0)
            continue
        cell = Cell(scenario, model, protocol, x, m.key, NA, n_base=len(base), n_new=len(new))
        cells.append(cell)
        if model == comparison.reference and m.normalised:
            cell.verdict = REFERENCE
            continue
        if not base or not new:
            cell.note = f"{m.short} missing in {'NEW' if base else 'BASE'}"
            continue
        cell.base_median, cell.new_median = statistics.median(base), statistics.median(new)
        ratio = cell.new_median / cell.base_median if cell.base_median > 0 else None
        if comparison.reference and m.normalised:
            ref_b, ref_n = _values(base_ref, m), _values(new_ref, m)
            if not ref_b or not ref_n or min(map(statistics.median, (ref_b, ref_n))) <= 0:
                cell.note = f"no {comparison.reference} {m.short} to normalise by"
                continue
            # (NEW/NEW_ref) / (BASE/BASE_ref), on the medians
            ratio = ratio and ratio * statistics.median(ref_b) / statistics.median(ref_n)
            base = _per_repeat(base_trials, base_ref, m)
            new = _per_repeat(new_trials, new_ref, m)
        if ratio is None:
            cell.note = "BASE median is 0"
            continue
        _judge(cell, ratio, base, new, m.lower_is_better, comparison)
    return cells


def _lost_point(key: tuple, n_base: int, failed: list[dict] | None,
                trials: list[dict] | None) -> Cell:
    """A point measured in BASE with no ok trial in NEW.

    A server that now fails (crashes, loses messages) is a regression; a point
    whose trials were only invalid (the load generator saturated) says nothing
    about the server, and one not run at all (another suite or model list)
    neither.
    """
    cell = Cell(*key, STATUS, NA, n_base=n_base)
    if failed:
        cell.verdict = REGRESSION
        cell.note = (f"{len(failed)} of {len(trials)} trial(s) failed in NEW: "
                     f"{(failed[0]['reason'] or 'no reason')[:80]}")
    else:
        cell.note = "only invalid trials in NEW" if trials else "not measured in NEW"
    return cell


def compare_runs(base: dict, new: dict, reference: str | None = "epoll",
                 threshold: float = 1.25, alpha: float = 0.01,
                 untested_ratio: float = UNTESTED_RATIO) -> Comparison:
    """Judge every (scenario point, model, metric) of BASE against NEW."""
    comparison = Comparison(base, new, reference, threshold, alpha, [], untested_ratio)
    base_ok, new_ok = group_points(base), group_points(new)
    new_failed, new_any = group_points(new, ("failed",)), group_points(new, TRIAL_STATUSES)
    for key in sorted(set(base_ok) | set(new_ok), key=_order(base)):
        scenario, model, protocol, x = key
        if key not in new_ok:
            comparison.cells.append(_lost_point(key, len(base_ok[key]), new_failed.get(key),
                                                new_any.get(key)))
            continue
        if key not in base_ok:
            comparison.cells.append(Cell(scenario, model, protocol, x, STATUS, NA,
                                         n_new=len(new_ok[key]), note="not measured in BASE"))
            continue
        ref_key = (scenario, reference, protocol, x)
        comparison.cells.extend(_compare_point(key, base_ok[key], new_ok[key],
                                               base_ok.get(ref_key), new_ok.get(ref_key),
                                               comparison))
    return comparison


def _order(results: dict):
    rank = {name: i for i, name in enumerate(results["scenarios"])}

    def sort_key(key: tuple) -> tuple:
        scenario, model, protocol, x = key
        return (rank.get(scenario, len(rank)), scenario, protocol,
                (0, x) if isinstance(x, (int, float)) else (1, str(x)), model)
    return sort_key
