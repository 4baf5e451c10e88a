"""`muxbench report`: tables checked against medians computed here from the fixture, valid PNGs,
sentences that follow the data, and one clear line for unusable input."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from bench.report.build import build_tables
from bench.report.measures import Run, fmt
from bench.report.tables import environment_table
from muxbench.cli import main
from tests.report_markdown import (
    CELL_PATHS,
    FIXTURE,
    close,
    expected_median,
    fixture,
    parse_tables,
    parse_value,
)
from tests.support import MUXBENCH, ROOT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# What a table cell may add below its figures: repeats that did not count, a ceiling.
CELL_NOTE = re.compile(r"\(\+\d+ (failed|invalid)(, \d+ invalid)?\)|\((ceiling|see note)\)")
PLOTS = ["cpu_vs_clients", "idle_cpu", "memory_pss", "echo_clients", "echo_size", "open_loop",
         "chat_fanout", "sparse", "churn", "polling_interval"]

# Each plot's scenario and, panel by panel, the figure it draws per model against x
# (stated here, independently of bench/report/plots.py).
PLOTTED = {
    "cpu_vs_clients": ("cpu_vs_clients", ["server.cpu_util"]),
    "idle_cpu": ("idle", ["server.cpu_util"]),
    "memory_pss": ("idle", ["server.pss_peak_bytes"]),
    "echo_clients": ("echo_clients", ["load.throughput_msgs_s", "load.latency_us.p99"]),
    "echo_size": ("echo_size", ["load.throughput_msgs_s", "derived.cpu_per_msg_us"]),
    "open_loop": ("open_loop", ["load.latency_us.p99", "load.service_time_us.p99"]),
    "chat_fanout": ("chat_fanout", ["load.latency_us.p99", "server.cpu_util"]),
    "sparse": ("sparse", ["derived.cpu_per_msg_us"]),
    "churn": ("churn", ["load.connections_per_s"]),
}

Series = dict[str, tuple[list[float], list[float]]]  # legend label -> (x, y)


def series(fig) -> list[Series]:
    """Per panel, each model's line as drawn: a median line with its bars, or an empty
    line that only puts the model in the legend."""
    panels = []
    for ax in fig.axes:
        drawn = {c.get_label(): c.lines[0] for c in ax.containers
                 if isinstance(c, ErrorbarContainer)}
        drawn.update((line.get_label(), line) for line in ax.get_lines()
                     if not line.get_label().startswith("_") and not len(line.get_xdata()))
        panels.append({label: ([float(v) for v in line.get_xdata()],
                               [float(v) for v in line.get_ydata()])
                       for label, line in drawn.items()})
    return panels


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("report")
    run_dir = base / "20261129T161500Z-quick"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(FIXTURE.read_text())
    figures: dict[str, list[Series]] = {}
    save = Figure.savefig

    def recording(fig, fname, *args, **kwargs):
        figures[Path(fname).stem] = series(fig)  # what the PNG shows, read before it is drawn
        return save(fig, fname, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", recording)
        status = main(["report", str(run_dir), "--plots", str(base / "plots"), "-q"])
    markdown = (run_dir / "REPORT.md").read_text()
    return {"status": status, "run_dir": run_dir, "plots": base / "plots", "figures": figures,
            "markdown": markdown, "tables": parse_tables(markdown)}


def scenario_table(rendered: dict, scenario: str) -> tuple[list[str], list[list[str]]]:
    [key] = [k for k in rendered["tables"] if k.endswith(f"(`{scenario}`)")]
    return rendered["tables"][key]


def test_report_exits_zero_and_writes_every_plot_as_png(rendered):
    assert rendered["status"] == 0
    for where in (rendered["run_dir"] / "plots", rendered["plots"]):
        for name in PLOTS:
            data = (where / f"{name}.png").read_bytes()
            assert data.startswith(PNG_SIGNATURE), name
            assert len(data) > 20_000, f"{name}.png is suspiciously small"


@pytest.mark.parametrize("name", sorted(PLOTTED))
def test_each_plot_draws_every_model_at_every_measured_point(rendered, name):
    """One line per model of the scenario, through the medians of its ok repeats at
    exactly the points where it has one; a model with none is still in the legend."""
    results = fixture()
    scenario, paths = PLOTTED[name]
    models = {t["model"] for t in results["trials"] if t["scenario"] == scenario}
    xs = sorted({t["point"][results["scenarios"][scenario]["x"]]
                 for t in results["trials"] if t["scenario"] == scenario})
    ok = {(t["model"], t["point"][results["scenarios"][scenario]["x"]])
          for t in results["trials"] if t["scenario"] == scenario and t["status"] == "ok"}
    # A point with no ok repeat is a cross on the axis, with one legend entry for all.
    crossed = any((model, x) not in ok for model in models for x in xs)
    panels = rendered["figures"][name]
    assert len(panels) == len(paths)
    for panel, path in zip(panels, paths, strict=True):
        key = [label for label in panel if label.startswith("x on axis")]
        assert len(key) == crossed, (name, sorted(panel))
        by_model = {label.split(" ")[0]: line for label, line in panel.items()
                    if label not in key}
        assert set(by_model) == models, (name, path, sorted(panel))
        for model, (x, y) in by_model.items():
            expected = {v: m for v in xs
                        if (m := expected_median(results, scenario, model, v, path)) is not None}
            assert x == list(expected), (name, path, model)
            # Drawn in the plot's unit: one factor for the whole line.
            if y:
                factors = [drawn / median for drawn, median in zip(y, expected.values(),
                                                                  strict=True)]
                assert factors == pytest.approx([factors[0]] * len(factors)), (name, model)


def test_polling_interval_plot_draws_each_models_points(rendered):
    results = fixture()
    models = {t["model"] for t in results["trials"] if t["scenario"] == "polling_interval"}
    [panel] = rendered["figures"]["polling_interval"]
    for model in models:
        intervals = {t["point"]["interval_ms"] for t in results["trials"]
                     if t["scenario"] == "polling_interval" and t["model"] == model}
        measured = [v for v in sorted(intervals) if all(
            expected_median(results, "polling_interval", model, v, path) is not None
            for path in ("server.cpu_util", "load.latency_us.p50"))]
        for percentile in ("p50", "p99"):
            cpu, _ = panel[f"{model} {percentile} latency"]
            assert len(cpu) == len(measured) > 0
    assert {label.split(" ")[0] for label in panel} == models


def test_report_embeds_plots_by_valid_relative_links(rendered):
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", rendered["markdown"])
    assert {Path(link).stem for link in links} == set(PLOTS)
    for link in links:
        assert (rendered["run_dir"] / link).is_file(), link


@pytest.mark.parametrize("scenario", sorted(CELL_PATHS))
def test_scenario_table_cells_are_the_fixture_medians(rendered, scenario):
    results = fixture()
    columns, rows = scenario_table(rendered, scenario)
    xs = [float(c.split("= ")[1].replace(",", "")) for c in columns[1:]]
    models = {t["model"] for t in results["trials"] if t["scenario"] == scenario}
    assert {row[0] for row in rows} == models
    checked = 0
    for row in rows:
        model = row[0]
        for x, cell in zip(xs, row[1:], strict=True):
            lines = cell.split("<br>")
            medians = [expected_median(results, scenario, model, x, p)
                       for p in CELL_PATHS[scenario]]
            if medians[0] is None:
                assert re.search(r"failed|invalid|not measured", cell), (model, x, cell)
                continue
            # One line per figure, then only the notes a point may carry.
            figures, notes = lines[:len(medians)], lines[len(medians):]
            assert all(CELL_NOTE.fullmatch(note) for note in notes), (scenario, model, x, cell)
            for line, median in zip(figures, medians, strict=True):
                if median is None:
                    assert line == "n/a", (scenario, model, x, cell)
                    continue
                assert close(parse_value(line), median), (scenario, model, x, line, median)
                checked += 1
    assert checked >= len(rows)


def test_failed_invalid_and_ceiling_trials_are_shown_with_reasons(rendered):
    columns, rows = scenario_table(rendered, "sparse")
    select = next(r for r in rows if r[0] == "select")
    assert select[columns.index("idle fds = 10,000")] == "2 failed"
    assert "2 of 2 repeats failed -- 8997 errors (ECONNRESET: 8997)" in rendered["markdown"]
    columns, rows = scenario_table(rendered, "idle")
    select = next(r for r in rows if r[0] == "select")
    assert select[columns.index("idle clients = 3,000")].endswith("<br>(ceiling)")
    assert "ceiling: 1983 of 3000 connections turned away" in rendered["markdown"]
    columns, rows = scenario_table(rendered, "echo_clients")
    asyncio = next(r for r in rows if r[0] == "asyncio")
    assert "(+1 invalid)" in asyncio[columns.index("clients = 100")]
    assert "load generator saturated" in rendered["markdown"]


def test_seed_mechanism_table_uses_measured_idle_cpu(rendered):
    results = fixture()
    [key] = [k for k in rendered["tables"] if k.startswith("Polling / selecting / interrupt")]
    columns, rows = rendered["tables"][key]
    col = columns.index("CPU at idle at idle clients = 3,000")
    for row in rows:
        median = expected_median(results, "idle", row[1], 3000, "server.cpu_util")
        if median is None:
            assert row[col] == "not measured"
        else:
            assert close(parse_value(row[col]), median), row
    select = next(r for r in rows if r[1] == "select")
    assert select[col].endswith("(ceiling)")
    assert "failed at idle fds = 10,000" in select[-1]
    assert "connections turned away" in select[-1]


def test_seed_chat_table_ratio_matches_the_fixture(rendered):
    results = fixture()
    [key] = [k for k in rendered["tables"] if k.startswith("Event-driven vs polling chat")]
    rows = rendered["tables"][key][1]
    row = next(r for r in rows if r[0].startswith("CPU use at room size (clients) = 200"))
    epoll, polling = (expected_median(results, "chat_fanout", m, 200, "server.cpu_util")
                      for m in ("epoll", "polling"))
    assert close(parse_value(row[1]), epoll)
    assert close(parse_value(row[2]), polling)
    assert float(row[3].rstrip("x").replace(",", "")) == pytest.approx(polling / epoll, rel=6e-3)


def test_memory_table_pss_per_connection_is_the_fitted_slope(rendered):
    results = fixture()
    [key] = [k for k in rendered["tables"] if k.startswith("Multi-process memory")]
    columns, rows = rendered["tables"][key]
    fork = next(r for r in rows if r[0] == "fork")
    xs = [10, 300, 3000]
    ys = [expected_median(results, "idle", "fork", x, "server.pss_peak_bytes") for x in xs]
    slope = np.polyfit(xs, ys, 1)[0]
    assert close(parse_value(fork[columns.index("PSS per connection (fit)")]), slope)
    assert (f"Each connection adds {fmt(slope, 'bytes')} of PSS to the fork server (slope "
            "fitted") in rendered["markdown"]


def sentences_of(results: dict, scenario: str) -> list[str]:
    _, per_scenario = build_tables(Run(results))
    return dict(per_scenario)[scenario].sentences


def test_sentences_follow_the_data():
    results = fixture()
    before = " ".join(sentences_of(results, "cpu_vs_clients"))
    best = min((m for m in ("polling", "select", "epoll", "sigio", "thread", "fork", "asyncio")),
               key=lambda m: expected_median(results, "cpu_vs_clients", m, 1000,
                                             "server.cpu_util"))
    value = expected_median(results, "cpu_vs_clients", best, 1000, "server.cpu_util")
    assert f"{best} had the lowest server CPU ({fmt(value, 'core')})" in before

    changed = copy.deepcopy(results)
    for trial in changed["trials"]:
        if trial["scenario"] == "cpu_vs_clients" and trial["model"] == best:
            trial["server"]["cpu_util"] *= 40  # now worse than polling
    after = " ".join(sentences_of(changed, "cpu_vs_clients"))
    assert after != before
    assert f"{best} the highest" in after
    assert f"{best} had the lowest" not in after


def knee_sentence(results: dict) -> str:
    [sentence] = [s for s in sentences_of(results, "open_loop") if s.startswith("Knee")]
    return sentence


def test_knee_sentence_moves_with_the_data():
    results = fixture()
    # polling delivers about 9,200 of the 20,000 msgs/s offered: under 90 %, so its knee.
    assert "polling at 20,000" in knee_sentence(results)
    changed = copy.deepcopy(results)
    for trial in changed["trials"]:
        if trial["scenario"] == "open_loop" and trial["model"] == "polling":
            trial["load"]["throughput_msgs_s"] = trial["load"]["rate"]
            trial["load"]["latency_us"]["p99"] = 200.0
    text = knee_sentence(changed)
    assert "polling at" not in text
    assert re.search(r"no knee up to 80,000 for [^.]*polling", text)


def test_missing_scenarios_models_and_values_still_render(tmp_path, capsys):
    results = fixture()
    results["trials"] = [t for t in results["trials"]
                         if t["scenario"] != "churn" and t["model"] != "fork"]
    del results["scenarios"]["churn"]
    for trial in results["trials"]:
        if trial["scenario"] == "cpu_vs_clients":  # a whole scenario with no ok repeat
            trial["status"], trial["reason"] = "invalid", "load generator fell behind"
        if trial["scenario"] == "idle" and trial["model"] != "polling":
            trial["server"]["cpu_util"] = 0.0  # below what a short window can resolve
        if trial["status"] == "failed":  # brackets that rich must not take for markup
            trial["reason"] = "server exited: OSError: [Errno 24] Too many open files"
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(results))
    assert main(["report", str(path), "--plots", str(tmp_path / "plots")]) == 0
    markdown = (tmp_path / "REPORT.md").read_text()
    assert "Scenario `churn` was not measured in this run." in markdown
    ipc_rows = parse_tables(markdown)["Multi-process needs IPC: the fork chat's relay, measured"][1]
    assert "fork" not in [row[0] for row in ipc_rows]
    for name in PLOTS:
        assert (tmp_path / "plots" / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)
    rows = parse_tables(markdown)["Server CPU vs clients (10 msgs/s each) (`cpu_vs_clients`)"][1]
    assert all(cell == "2 invalid" for row in rows for cell in row[1:])
    assert "used none that the sampler could measure" in markdown
    terminal = capsys.readouterr().out
    assert "Polling / selecting / interrupt" in terminal
    assert "Event-driven vs polling chat" in terminal
    assert "[Errno 24] Too many open files" in terminal


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MUXBENCH, "report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("content", [
    None,                                  # missing file
    "{not json",                           # malformed JSON
    json.dumps({"schema_version": 99}),    # another schema
    "bad-point",                           # a trial whose point is not an object
])
def test_unusable_results_exit_2_with_one_line(tmp_path, content):
    path = tmp_path / "results.json"
    if content == "bad-point":
        results = fixture()
        results["trials"][0]["point"] = [1, 2]
        content = json.dumps(results)
    if content is not None:
        path.write_text(content)
    proc = run_cli(str(path), "--plots", str(tmp_path / "plots"), "--root", str(tmp_path))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("muxbench report: ")
    assert not (tmp_path / "REPORT.md").exists()


def test_unwritable_plots_directory_is_a_clear_error(tmp_path):
    (tmp_path / "results.json").write_text(FIXTURE.read_text())
    (tmp_path / "taken").write_text("a file, not a directory")
    proc = run_cli(str(tmp_path), "--plots", str(tmp_path / "taken" / "plots"), "-q")
    assert proc.returncode == 2
    assert proc.stderr.startswith("muxbench report: cannot write ")
    assert "Traceback" not in proc.stderr


def test_no_latest_run_is_a_clear_error(tmp_path):
    proc = run_cli("--root", str(tmp_path / "results"))
    assert proc.returncode == 2
    assert "latest" in proc.stderr and "Traceback" not in proc.stderr


def test_units_are_formatted_with_their_prefix():
    assert fmt(7.52, "us") == "7.52 µs"
    assert fmt(1234.0, "us") == "1.23 ms"
    assert fmt(2_500_000.0, "us") == "2.50 s"
    assert fmt(0.004, "core") == "0.400 %"
    assert fmt(3 * 2**20, "bytes") == "3.00 MiB"
    assert fmt(2400, "bytes") == "2.34 KiB"
    assert fmt(41234.0, "msgs") == "41,200 msgs/s"


def test_ipc_and_lock_tables_match_the_fixture(rendered):
    results = fixture()
    ipc = rendered["tables"]["Multi-process needs IPC: the fork chat's relay, measured"]
    columns, rows = ipc
    for row in rows:
        p99 = expected_median(results, "chat_fanout", row[0], 200, "load.latency_us.p99")
        assert close(parse_value(row[columns.index("p99 latency")]), p99), row
    columns, rows = rendered["tables"][
        "Threads need synchronisation: what the shared chat room costs"]
    chat = next(r for r in rows if r[0] == "chat")
    thread, epoll = (expected_median(results, "chat_fanout", m, 200, "derived.cpu_per_msg_us")
                     for m in ("thread", "epoll"))
    assert close(parse_value(chat[columns.index("thread CPU/msg")]), thread)
    assert close(parse_value(chat[columns.index("epoll CPU/msg")]), epoll)


def test_tied_leaders_are_all_named_and_a_lead_change_needs_a_common_point():
    results = fixture()
    for trial in results["trials"]:
        if trial["scenario"] == "idle" and trial["model"] in ("epoll", "sigio"):
            trial["server"]["cpu_util"] = 0.0
    text = " ".join(sentences_of(results, "idle"))
    assert "epoll and sigio had the lowest server CPU (0 %)" in text
    assert "changes with" not in text  # the same pair leads at every point

    # polling leads sparse at 0 idle fds and epoll at 1,000: a change, as polling was
    # measured at both.  Without polling's larger points nothing shows it lost the lead.
    results = fixture()
    assert "polling leads at 0 but epoll at 1,000" in " ".join(sentences_of(results, "sparse"))
    results["trials"] = [t for t in results["trials"] if not (
        t["scenario"] == "sparse" and t["model"] == "polling" and t["point"]["idle"] > 0)]
    assert "changes with" not in " ".join(sentences_of(results, "sparse"))


def test_a_lead_lost_within_the_spread_of_the_repeats_is_not_a_change():
    results = fixture()
    sparse = [t for t in results["trials"] if t["scenario"] == "sparse"
              and t["point"]["idle"] == 1000]
    polling = sorted(t["derived"]["cpu_per_msg_us"] for t in sparse if t["model"] == "polling")
    epoll = [t for t in sparse if t["model"] == "epoll"]
    # epoll's median is still lower than polling's, but its range overlaps polling's.
    epoll[0]["derived"]["cpu_per_msg_us"] = polling[0] - 1.0
    epoll[1]["derived"]["cpu_per_msg_us"] = polling[-1] + 0.5
    text = " ".join(sentences_of(results, "sparse"))
    assert "changes with" not in text
    assert "At idle fds = 1,000, epoll had the lowest CPU per message" in text


def test_environment_table_says_how_quiet_the_generators_cpus_were():
    results = fixture()
    assert dict((row[0][0], row[1][0]) for row in environment_table(Run(results)).rows)[
        "other work on the load generator's CPUs"] == "not recorded"  # older runs
    others = [0.004, 0.012, 0.109, 0.020]
    for trial, other in zip(results["trials"][:len(others)], others, strict=True):
        trial["client"] = {"cpu_s": 1.0, "source": "rusage",
                           "window": {"cpus": [1], "busy_s": 0.2 + other, "generator_s": 0.15,
                                      "orchestrator_s": 0.05, "other_s": other,
                                      "steal_s": other / 2}}
    results["environment"]["damon_monitors"] = 1
    rows = dict((row[0][0], row[1][0]) for row in environment_table(Run(results)).rows)
    worst = results["trials"][2]
    point = ", ".join(f"{k} {v}" for k, v in worst["point"].items())
    assert rows["other work on the load generator's CPUs"] == (
        f"median 0.016 s, max 0.109 s a window ({worst['scenario']}, {worst['model']}, "
        f"{point}; 4 windows)")
    assert rows["time the hypervisor took from them (steal)"] == (
        f"median 0.008 s, max 0.054 s a window ({worst['scenario']}, {worst['model']}, "
        f"{point}; 4 windows)")
    assert rows["DAMON memory monitors running"] == "1"
