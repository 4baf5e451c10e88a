"""Sentences computed from the numbers: who wins where, by how much, where the curves cross.

Every sentence is built from medians of the run; with other data it says other
things (or nothing, when there is not enough to compare).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

from bench.metrics import CPU, P50, P99, Metric
from bench.report.measures import Run, fmt, fmt_ratio, fmt_x, knee, scenario_metrics
from servers.reference import C_SERVER


def ranked(run: Run, scenario: str, x: Any, m: Metric) -> list[tuple[str, float]]:
    """Contenders (not the C reference) with a median at x, best first."""
    values = [(model, run.median(scenario, model, x, m)) for model in run.models(scenario)
              if model != C_SERVER]
    present = [(model, v) for model, v in values if v is not None]
    return sorted(present, key=lambda mv: mv[1], reverse=not m.lower_is_better)


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is zero."""
    return a / b if b else None


def _names(models: list[str]) -> str:
    return models[0] if len(models) == 1 else ", ".join(models[:-1]) + " and " + models[-1]


def _tied(ranking: list[tuple[str, float]], value: float) -> list[str]:
    return [model for model, v in ranking if v == value]


def _extremes(run: Run, scenario: str, x: Any, m: Metric) -> list[str]:
    ranking = ranked(run, scenario, x, m)
    if len(ranking) < 2:
        return []
    bv, wv = ranking[0][1], ranking[-1][1]
    if bv == wv:
        return [f"At {run.at(scenario, x)}, every model measured {fmt(bv, m.unit)} of "
                f"{m.label}."]
    best, worst = _tied(ranking, bv), _tied(ranking, wv)
    low, high = ("lowest", "highest") if m.lower_is_better else ("highest", "lowest")
    text = (f"At {run.at(scenario, x)}, {_names(best)} had the {low} {m.label} "
            f"({fmt(bv, m.unit)}) and {_names(worst)} the {high} ({fmt(wv, m.unit)})")
    factor = ratio(wv, bv) if m.lower_is_better else ratio(bv, wv)
    if factor is not None:
        text += f": {fmt_ratio(factor)} {'more' if m.lower_is_better else 'less'}"
    sentences = [text + "."]
    ref = run.median(scenario, C_SERVER, x, m)
    if ref:
        gap = ratio(bv, ref) if m.lower_is_better else ratio(ref, bv)
        if gap is not None and gap >= 1:
            sentences.append(f"The C reference measured {fmt(ref, m.unit)} there, so the best "
                             f"Python model is {fmt_ratio(gap)} off the limit.")
        elif gap:
            sentences.append(f"The C reference measured {fmt(ref, m.unit)} there: the best "
                             f"Python model did {fmt_ratio(1 / gap)} better than the limit "
                             "in this run.")
    return sentences


def _beats(run: Run, scenario: str, x: Any, m: Metric, new: str, old: str) -> bool:
    stats = [run.point(scenario, model, x).stat(m) for model in (new, old)]
    if m.lower_is_better:
        return stats[0]["max"] < stats[1]["min"]
    return stats[0]["min"] > stats[1]["max"]


def _lead(run: Run, scenario: str, m: Metric) -> list[str]:
    """Either where the lead changes hands, or how the leader scales (ties share the lead)."""
    leaders, measured = [], {}
    for x in run.xs(scenario):
        ranking = ranked(run, scenario, x, m)
        if len(ranking) >= 2:
            leaders.append((x, _tied(ranking, ranking[0][1])))
            measured[x] = {model for model, _ in ranking}
    if len(leaders) < 2:
        return []
    # The lead changes hands only when an earlier leader is measured at the next point and
    # is beaten there beyond the spread of the repeats (the min-max ranges do not overlap);
    # a leader that was not measured there, or lost within the noise, proves nothing.
    changes = []
    for (xa, a), (xb, b) in pairwise(leaders):
        still_there = [model for model in a if model in measured[xb]]
        if still_there and all(_beats(run, scenario, xb, m, b[0], old) for old in still_there):
            changes.append(((xa, still_there), (xb, b)))
    if changes:
        parts = [f"{_names(a)} {'lead' if len(a) > 1 else 'leads'} at {fmt_x(xa)} but "
                 f"{_names(b)} at {fmt_x(xb)}" for (xa, a), (xb, b) in changes]
        return [f"The lead in {m.label} changes with {run.x_label(scenario)}: "
                + "; ".join(parts) + "."]
    common = [model for model in leaders[0][1] if all(model in ms for _, ms in leaders)]
    if not common:
        return []
    leader = common[0]
    (x0, _), (x1, _) = leaders[0], leaders[-1]
    v0, v1 = (run.median(scenario, leader, x, m) for x in (x0, x1))
    growth = ratio(v1, v0)
    change = f" ({fmt_ratio(growth)})" if growth is not None else ""
    return [f"{leader} leads at every {run.x_label(scenario)} value compared; from {fmt_x(x0)} "
            f"to {fmt_x(x1)} its {m.label} went from {fmt(v0, m.unit)} to {fmt(v1, m.unit)}"
            f"{change}."]


def _failures(run: Run, scenario: str) -> list[str]:
    sentences = []
    for model in run.models(scenario):
        dead = [p.x for p in run.points(scenario, model) if not p.ok and p.failed]
        if dead:
            xs = ", ".join(fmt_x(x) for x in dead)
            sentences.append(f"{model} failed every repeat at {run.x_label(scenario)} = {xs}.")
    return sentences


def _knees(run: Run, scenario: str) -> list[str]:
    found, none = [], []
    for model in run.models(scenario):
        k = knee(run, scenario, model)
        if k is not None:
            found.append((k, model))
        elif any(p.median(P99) is not None for p in run.points(scenario, model)):
            none.append(model)
    if not found and not none:
        return []  # nothing measured: the table's notes say why
    parts = [f"{model} at {fmt_x(k)}" for k, model in sorted(found, key=lambda km: km[0])]
    text = "Knee (under 90 % of the offered load delivered, or p99 above 10x its value " \
           "at the lowest load): " + ("; ".join(parts) if parts else "none")
    if none:
        top = fmt_x(run.xs(scenario)[-1])
        text += f"; no knee up to {top} for " + ", ".join(none)
    return [text + "."]


def _tradeoff(run: Run, scenario: str) -> list[str]:
    sentences = []
    for model in run.models(scenario):
        pts = [p for p in run.points(scenario, model)
               if p.median(CPU) is not None and p.median(P50) is not None]
        if len(pts) < 2:
            continue
        a, b = pts[0], pts[-1]
        cut = ratio(a.median(CPU), b.median(CPU))
        cpu_change = f" ({fmt_ratio(cut)} less)" if cut and cut >= 1 else ""
        sentences.append(
            f"Going from {run.at(scenario, a.x)} to {fmt_x(b.x)}, {model}'s CPU went from "
            f"{fmt(a.median(CPU), CPU.unit)} to {fmt(b.median(CPU), CPU.unit)}{cpu_change} "
            f"and its p50 latency from {fmt(a.median(P50), 'us')} to "
            f"{fmt(b.median(P50), 'us')}.")
    return sentences


EXTRA = {"open_loop": _knees, "polling_interval": _tradeoff}


def scenario_sentences(run: Run, scenario: str) -> list[str]:
    m = scenario_metrics(scenario)[0]
    # Compare where the most contenders were measured; ties go to the larger x.
    candidates = [(len(ranked(run, scenario, x, m)), i, x)
                  for i, x in enumerate(run.xs(scenario))]
    sentences = []
    if candidates:
        _, _, x = max(candidates)
        sentences += _extremes(run, scenario, x, m)
    sentences += _lead(run, scenario, m)
    if scenario in EXTRA:
        sentences += EXTRA[scenario](run, scenario)
    return sentences + _failures(run, scenario)
