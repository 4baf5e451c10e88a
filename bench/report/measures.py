"""How the report reads a run: per-point medians, units, model colours, each scenario's metrics.

Tables, plots and computed sentences all read the run through this module (and
the metrics through the catalogue, bench/metrics.py), so a
number printed in REPORT.md, drawn in a PNG and quoted in a sentence is the same
median of the same repeats, formatted with the same unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.metrics import (
    DEFAULT_METRICS,
    OFFERED,
    P99,
    PSS,
    SCENARIO_METRICS,
    THROUGHPUT,
    WHEN_RUN,
    Metric,
)
from bench.results import group_points, is_generator_bound, metric, summary
from servers.models import MODELS
from servers.reference import C_SERVER

# One fixed colour per model, in every plot, in catalogue order: matplotlib's ten
# defaults, reordered so that neighbours in the catalogue contrast.  The C server,
# drawn as the limit and never a contender, is black.
PALETTE = ("#d62728", "#ff7f0e", "#bcbd22", "#1f77b4", "#17becf", "#9467bd", "#2ca02c",
           "#8c564b", "#e377c2", "#7f7f7f")
COLOURS: dict[str, str] = {**dict(zip(MODELS, PALETTE, strict=False)), C_SERVER: "#000000"}
MODEL_ORDER = [*MODELS, C_SERVER]
# For a model of no fixed colour (a server given with `muxbench bench --server`):
# never one of the built-in models' colours.
OTHER_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#e6550d", "#31a354",
                 "#3182bd", "#756bb1", "#636363")


def colour(model: str) -> str:
    # The same name gets the same colour in every plot and every run.
    return COLOURS.get(model) or OTHER_COLOURS[sum(map(ord, model)) % len(OTHER_COLOURS)]


def model_sort_key(model: str) -> tuple[int, str]:
    """Catalogue order; any other model (a --server) after the built-in ones, by name,
    and the C reference last, as the limit they are all read against."""
    if model == C_SERVER:
        return (len(MODEL_ORDER) + 1, "")
    return (MODEL_ORDER.index(model) if model in MODEL_ORDER else len(MODEL_ORDER), model)


UNIT_NAMES = {"us": "µs", "core": "% of a core", "bytes": "MiB", "msgs": "msgs/s",
              "conns": "conn/s", "count": "per msg"}


def _sig3(value: float) -> str:
    """Three significant figures, never in exponent notation."""
    if value == 0:
        return "0"
    digits = math.floor(math.log10(abs(value)))
    if digits >= 2:
        return f"{round(value, 2 - digits):,.0f}"
    return f"{value:.{2 - digits}f}"


def fmt(value: float | None, unit: str) -> str:
    """A value with its unit, scaled to a readable prefix."""
    if value is None:
        return "n/a"
    if unit == "us":
        if abs(value) >= 1e6:
            return f"{_sig3(value / 1e6)} s"
        if abs(value) >= 1e3:
            return f"{_sig3(value / 1e3)} ms"
        return f"{_sig3(value)} µs"
    if unit == "core":
        return f"{_sig3(value * 100)} %"
    if unit == "bytes":
        if abs(value) >= 1 << 20:
            return f"{_sig3(value / (1 << 20))} MiB"
        if abs(value) >= 1 << 10:
            return f"{_sig3(value / (1 << 10))} KiB"
        return f"{_sig3(value)} B"
    if unit == "count":
        return _sig3(value)
    return f"{_sig3(value)} {UNIT_NAMES[unit]}"


def fmt_ratio(ratio: float) -> str:
    return f"{_sig3(ratio)}x"


def fmt_x(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


@dataclass
class Point:
    """Every repeat at one (scenario, model, x): the ok ones and the rest."""

    x: Any
    ok: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    invalid: list[dict] = field(default_factory=list)

    @property
    def noted(self) -> list[dict]:
        """Ok repeats that carry a reason, e.g. a server's fd ceiling reached."""
        return [t for t in self.ok if t.get("reason")]

    @property
    def bound(self) -> list[dict]:
        """Invalid repeats kept as bounds: the generator ran out of CPU, nothing else."""
        return [t for t in self.invalid if is_generator_bound(t)]

    @property
    def unbound_invalid(self) -> list[dict]:
        return [t for t in self.invalid if not is_generator_bound(t)]

    @property
    def only_bound(self) -> bool:
        """Every repeat generator-bound: the point has bounds, and no exact figure."""
        return bool(self.invalid) and not (self.ok or self.failed or self.unbound_invalid)

    def stat(self, m: Metric) -> dict:
        return summary(metric(t, m.path) for t in self.ok)

    def bound_stat(self, m: Metric) -> dict | None:
        """summary() of `m` over the bound repeats of a point that has only those,
        when `m` reads as a bound there (Metric.bound); else None."""
        if not (m.bound and self.only_bound):
            return None
        return summary(metric(t, m.path) for t in self.bound)

    def median(self, m: Metric) -> float | None:
        return self.stat(m)["median"]


class Run:
    """A loaded results.json, indexed by scenario and model."""

    def __init__(self, results: dict) -> None:
        self.results = results
        self.env: dict = results.get("environment") or {}
        self.scenarios: dict[str, dict] = results["scenarios"]
        self._points: dict[tuple[str, str], dict[Any, Point]] = {}
        grouped = group_points(results, statuses=("ok", "failed", "invalid"))
        for (scenario, model, _protocol, x), trials in grouped.items():
            per_x = self._points.setdefault((scenario, model), {})
            point = per_x.setdefault(x, Point(x))
            for trial in trials:
                getattr(point, trial["status"]).append(trial)

    def models(self, scenario: str | None = None) -> list[str]:
        found = {m for (s, m) in self._points if scenario is None or s == scenario}
        return sorted(found, key=model_sort_key)

    def xs(self, scenario: str) -> list[Any]:
        found = {x for (s, _), per_x in self._points.items() if s == scenario for x in per_x}
        return sorted(found, key=_x_key)

    def points(self, scenario: str, model: str) -> list[Point]:
        per_x = self._points.get((scenario, model), {})
        return [per_x[x] for x in sorted(per_x, key=_x_key)]

    def point(self, scenario: str, model: str, x: Any) -> Point | None:
        return self._points.get((scenario, model), {}).get(x)

    def median(self, scenario: str, model: str, x: Any, m: Metric) -> float | None:
        point = self.point(scenario, model, x)
        return point.median(m) if point else None

    def x_label(self, scenario: str) -> str:
        meta = self.scenarios.get(scenario, {})
        return meta.get("x_label") or meta.get("x") or "x"

    def at(self, scenario: str, x: Any) -> str:
        """'clients = 1,000': a point named the same way in every table and sentence."""
        return f"{self.x_label(scenario)} = {fmt_x(x)}"

    def common_x(self, scenario: str, models: list[str], m: Metric) -> Any:
        """The largest x at which every given model has a median of `m`, else None."""
        shared = [x for x in self.xs(scenario)
                  if all(self.median(scenario, model, x, m) is not None for model in models)]
        return shared[-1] if shared else None

    def last_ok(self, scenario: str, model: str, m: Metric) -> tuple[Any, float] | None:
        """The largest x with a median of `m` for this model, and that median."""
        for point in reversed(self.points(scenario, model)):
            value = point.median(m)
            if value is not None:
                return point.x, value
        return None


def _x_key(x: Any) -> tuple[int, Any]:
    # Numbers in numeric order; anything else after them, as text.
    return (0, x) if isinstance(x, (int, float)) else (1, str(x))


def knee(run: Run, scenario: str, model: str, latency: Metric = P99) -> Any:
    """The lowest offered load at which this model stopped keeping up, or None.

    Stopped keeping up: it delivered under 90 % of the offered rate, or its p99
    response time rose above ten times the p99 at the lowest offered load.
    """
    points = [p for p in run.points(scenario, model) if p.median(latency) is not None]
    if not points:
        return None
    base = points[0].median(latency)
    for point in points:
        achieved, offered = point.median(THROUGHPUT), point.median(OFFERED)
        if offered and achieved is not None and achieved < 0.9 * offered:
            return point.x
        if base and point.median(latency) > 10 * base:
            return point.x
    return None


def scenario_order(run: Run) -> list[str]:
    # Scenarios this module does not know, or that have trials but no metadata, still show.
    named = set(run.scenarios) | {t["scenario"] for t in run.results["trials"]}
    extra = sorted(s for s in named if s not in SCENARIO_METRICS)
    return [s for s in SCENARIO_METRICS if s in named or s not in WHEN_RUN] + extra


def scenario_metrics(scenario: str) -> tuple[Metric, ...]:
    return SCENARIO_METRICS.get(scenario, DEFAULT_METRICS)


def growth(run: Run, scenario: str, model: str | None, m: Metric) -> tuple | None:
    """(last / first median, first point, last point) over a model's measured points."""
    points = [p for p in run.points(scenario, model or "") if p.median(m) is not None]
    if len(points) < 2 or not points[0].median(m):
        return None
    return points[-1].median(m) / points[0].median(m), points[0], points[-1]


def pss_slope(run: Run, model: str) -> float | None:
    """Bytes of PSS each extra idle connection adds: a least-squares line over the medians."""
    pts = [(p.x, p.median(PSS)) for p in run.points("idle", model) if p.median(PSS)]
    if len(pts) < 2:
        return None
    xs, ys = zip(*pts, strict=True)
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])
