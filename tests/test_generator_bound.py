"""A trial whose load generator ran out of CPU, and nothing else went wrong, is a bound.

The verdict is read from the load generator's real summary (loadgen/summary.py)
of constructed worker results, through the harness's real classify(); the
report's cells and markers, the gate's indifference to such trials, and the
unchanged reading of runs stored before the flag are checked on the stored
fixture.
"""

from __future__ import annotations

import copy
import statistics
from array import array
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from bench.gate.judge import compare_runs
from bench.report.build import build_tables, render_markdown
from bench.report.measures import Run
from bench.report.plots import render_plots
from bench.report.tables import environment_table
from bench.results import ResultsError, load_results
from bench.run.outcome import classify, generator_bound
from loadgen.engine import Config, Outcome
from loadgen.integrity import Window
from loadgen.schedule import LATE_NS
from loadgen.summary import build
from tests import fake_results as fake
from tests.report_markdown import FIXTURE, close, fixture, parse_tables, parse_value
from tests.support import ROOT

DURATION = 2.0
FINISHED = {"timed_out": False, "exit_status": 1, "stderr": "", "timeout_s": 30.0}


def _samples(values: list[int]) -> bytes:
    return array("q", values).tobytes()


def generator_summary(busy: float, *, rate: float | None = None, late: int = 0,
                      lost: int = 0, errors: int = 0, missing_workers: int = 0) -> dict:
    """`muxbench load --json` of one worker on one CPU that was `busy` of the window,
    with `late` of its 100 own sends more than LATE_NS behind (open loop only)."""
    cfg = Config(workload="echo", host="127.0.0.1", port=1, clients=10, size=64, rate=rate,
                 arrival="constant", depth=1, duration=DURATION, warmup=0.5, procs=1, active=1,
                 connect_timeout=1.0, drain=0.1, seed=1, cpus=[0])
    messages = 1000
    worker = {"tally": {"sent": messages, "received": messages - lost, "lost": lost,
                        "corrupted": 0, "duplicated": 0, "reordered": 0},
              "errors": {"ECONNRESET": errors} if errors else {},
              "latency": _samples([50_000] * (messages - lost)),
              "service": _samples([40_000] * (messages - lost)) if rate else b"",
              "own_lag": (_samples([2 * LATE_NS] * late + [1000] * (100 - late))
                          if rate else b""),
              "cpu_ns": int(busy * DURATION * 1e9), "late_sends": late, "max_lag_ns": 0}
    outcome = Outcome(results=[worker], connected=10, window=Window(0, int(DURATION * 1e9)),
                      clock_offset=0.0, missing_workers=missing_workers,
                      procs=1 + missing_workers)
    return build(cfg, outcome)


def verdict(load: dict) -> tuple[str, bool]:
    status, _ = classify("echo", load, FINISHED, None, "")
    return status, generator_bound(status, load)


def test_a_generator_that_only_ran_out_of_cpu_makes_a_bound():
    load = generator_summary(0.99)
    assert load["valid"] is False and "saturated" in load["invalid_reason"]
    assert verdict(load) == ("invalid", True)
    # Open loop, schedule kept (2 of 100 sends late is under the generator's limit).
    assert verdict(generator_summary(0.99, rate=500.0, late=2)) == ("invalid", True)


@pytest.mark.parametrize("broken, status", [
    ({"lost": 3}, "failed"),
    ({"errors": 2}, "failed"),
    ({"rate": 500.0, "late": 40}, "invalid"),  # it offered less than the point names
    ({"missing_workers": 1}, "invalid"),  # it counted only part of the load
])
def test_a_saturated_generator_with_anything_else_wrong_is_no_bound(broken, status):
    assert verdict(generator_summary(0.99, **broken)) == (status, False)


def test_a_generator_with_cpu_to_spare_is_ok_and_no_bound():
    assert verdict(generator_summary(0.5)) == ("ok", False)


def test_generator_bound_must_be_a_boolean_in_a_results_file(tmp_path):
    results = fake.healthy_run(repeats=1)
    results["trials"][0]["generator_bound"] = True
    assert load_results(fake.write(results, tmp_path / "good"))["trials"][0]["generator_bound"]
    results["trials"][0]["generator_bound"] = "yes"
    with pytest.raises(ResultsError, match="generator_bound"):
        load_results(fake.write(results, tmp_path / "bad"))


# ---- the report ------------------------------------------------------------------------

SATURATED = "load generator saturated its CPUs (97% busy)"
# (scenario, model, x): every repeat generator-bound, or invalid for another reason.
BOUND = [("echo_clients", "c-epoll", 100), ("echo_size", "epoll", 65536)]
PLAIN = ("echo_clients", "epoll", 100)


def _at(results: dict, scenario: str, model: str, x: int) -> list[dict]:
    x_key = results["scenarios"][scenario]["x"]
    found = [t for t in results["trials"] if (t["scenario"], t["model"]) == (scenario, model)
             and t["point"][x_key] == x]
    assert found, (scenario, model, x)
    return found


def with_bounds() -> dict:
    results = fixture()
    for where in BOUND:
        for trial in _at(results, *where):
            trial.update(status="invalid", reason=SATURATED, generator_bound=True)
    for trial in _at(results, *PLAIN):
        trial.update(status="invalid", reason="load generator fell behind its send schedule")
    return results


def bound_median(results: dict, where: tuple, path: str) -> float:
    values = []
    for trial in _at(results, *where):
        value = trial
        for part in path.split("."):
            value = value[part]
        values.append(value)
    return statistics.median(values)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    results = with_bounds()
    run = Run(results)
    figures: dict[str, Figure] = {}
    save = Figure.savefig

    def recording(fig, fname, *args, **kwargs):
        figures[Path(fname).stem] = fig  # inspected as drawn, before it is closed
        return save(fig, fname, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", recording)
        plots = render_plots(run, tmp_path_factory.mktemp("plots"))
    markdown = render_markdown(run, *build_tables(run), plots)
    return {"results": results, "run": run, "markdown": markdown,
            "tables": parse_tables(markdown), "figures": figures}


def _cell(report: dict, scenario: str, model: str, x: int) -> list[str]:
    [key] = [k for k in report["tables"] if k.endswith(f"(`{scenario}`)")]
    columns, rows = report["tables"][key]
    row = next(r for r in rows if r[0] == model)
    column = next(i for i, c in enumerate(columns) if c.endswith(f"= {x:,}"))
    return row[column].split("<br>")


def test_a_point_whose_repeats_are_all_bound_shows_bounds(report):
    results = report["results"]
    throughput, p99, note = _cell(report, *BOUND[0])
    assert throughput.startswith("≥ ") and p99 == "n/a" and note == "(2 generator-bound)"
    assert close(parse_value(throughput[2:]),
                 bound_median(results, BOUND[0], "load.throughput_msgs_s"))
    throughput, cpu, note = _cell(report, *BOUND[1])
    assert throughput.startswith("≥ ") and cpu.startswith("≤ ")
    assert close(parse_value(cpu[2:]), bound_median(results, BOUND[1], "derived.cpu_per_msg_us"))
    assert "A cell of ≥ / ≤ figures" in report["markdown"]
    assert "2 of 2 repeats generator-bound -- " + SATURATED in report["markdown"]


def test_an_invalid_point_that_is_not_bound_stays_a_blank(report):
    assert _cell(report, *PLAIN) == ["2 invalid"]
    assert "2 of 2 repeats invalid -- load generator fell behind" in report["markdown"]


def test_the_environment_says_how_many_cpus_the_generator_had(report):
    rows = {row[0][0]: row[1][0] for row in environment_table(report["run"]).rows}
    line = rows["generator-bound trials"]
    assert line.startswith(f"4 of {len(report['results']['trials'])}: ")
    assert "1 CPU," in line and "every CPU but the server's" in line


def _hollow(ax) -> dict[str, tuple[list, list]]:
    """{colour: (x, y)} of the lines drawn with hollow markers and data."""
    return {line.get_markeredgecolor(): (list(line.get_xdata()), list(line.get_ydata()))
            for line in ax.get_lines()
            if line.get_markerfacecolor() == "none" and len(line.get_xdata())}


def _legend(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_bound_points_are_hollow_markers_where_the_metric_has_a_bound(report):
    results = report["results"]
    throughput, latency = report["figures"]["echo_clients"].axes[:2]
    # c-epoll is drawn in black; a bound at its point, where the bound's median is.
    assert _hollow(throughput) == {
        "black": ([100], [pytest.approx(bound_median(results, BOUND[0],
                                                     "load.throughput_msgs_s"))])}
    assert any(label.startswith("hollow: generator-bound") and "≥" in label
               for label in _legend(throughput))
    # Latency has no bound: the point is a cross on the axis, as a blank one is.
    assert _hollow(latency) == {}
    assert not any(label.startswith("hollow") for label in _legend(latency))
    crosses = [list(line.get_xdata()) for line in latency.get_lines()
               if line.get_marker() == "x" and len(line.get_xdata())]
    assert [100] in crosses
    cpu = report["figures"]["echo_size"].axes[1]
    [(xs, ys)] = _hollow(cpu).values()
    assert xs == [65536]
    assert ys == [pytest.approx(bound_median(results, BOUND[1], "derived.cpu_per_msg_us"))]
    assert any("≤" in label for label in _legend(cpu))


# ---- the gate --------------------------------------------------------------------------

def _bound_trials(results: dict, model: str, factor: float) -> list[dict]:
    """Copies of a model's echo_clients trials, generator-bound, their figures x factor."""
    out = []
    for trial in copy.deepcopy(results["trials"]):
        if (trial["scenario"], trial["model"]) == ("echo_clients", model):
            trial.update(status="invalid", reason=SATURATED, generator_bound=True)
            for key in ("throughput_msgs_s", "cpu_per_msg_us", "p99_us"):
                trial["derived"][key] *= factor
            out.append(trial)
    return out


def _verdicts(comparison) -> list[tuple]:
    return [(c.scenario, c.model, c.x, c.metric, c.verdict, c.ratio, c.note)
            for c in comparison.cells]


def test_compare_ignores_bound_trials():
    base, new = fake.healthy_run(seed=1), fake.healthy_run(seed=2)
    plain = _verdicts(compare_runs(base, new))
    # Bound trials beside the ok ones, ten times worse, change nothing.
    beside = copy.deepcopy(new)
    beside["trials"] += _bound_trials(new, "poll", 10.0)
    assert _verdicts(compare_runs(base, beside)) == plain
    # A point with only bound trials in NEW is no regression, whatever their figures.
    only = copy.deepcopy(new)
    only["trials"] = [t for t in only["trials"]
                      if (t["scenario"], t["model"]) != ("echo_clients", "poll")]
    only["trials"] += _bound_trials(new, "poll", 10.0)
    comparison = compare_runs(base, only)
    assert comparison.exit_status == 0
    [cell] = [c for c in comparison.cells if c.model == "poll" and c.scenario == "echo_clients"]
    assert (cell.metric, cell.verdict) == ("status", "n/a")


# ---- runs stored before the flag -------------------------------------------------------

@pytest.mark.parametrize("path", [FIXTURE, ROOT / "results" / "baseline" / "results.json"],
                         ids=["fixture", "baseline"])
def test_a_run_from_before_the_flag_reads_as_it_did(path):
    """Absent reads as false: the same REPORT.md text as with every trial flagged false,
    and no bound anywhere in it."""
    old = load_results(path)
    flagged = copy.deepcopy(old)
    for trial in flagged["trials"]:
        trial["generator_bound"] = False

    def markdown(results: dict) -> str:
        run = Run(results)
        return render_markdown(run, *build_tables(run), {})

    text = markdown(old)
    assert text == markdown(flagged)
    assert "≥" not in text and "≤" not in text and "generator-bound" not in text
