"""`muxbench compare` as a CI gate: a large change is never passed as noise, and CI can read it.

With too few repeats the Mann-Whitney test cannot reach alpha, so a change
can be neither confirmed nor ruled out.  Past --untested-ratio it fails the run
with its own exit status (3; a tested regression, 1, wins); below it, it stays
a note.  The exit statuses are checked through the real command line.
"""

from __future__ import annotations

import copy
import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from bench.gate import compare
from bench.gate.judge import compare_runs
from muxbench import procs
from muxbench.cli import main
from tests import fake_results as fake
from tests.support import MUXBENCH, ROOT

CPU, P99, THROUGHPUT = "derived.cpu_per_msg_us", "derived.p99_us", "derived.throughput_msgs_s"


def _quick(seed: int = 1) -> dict:
    """A quick run: every point measured once."""
    return fake.healthy_run(repeats=1, seed=seed)


def _scaled(results: dict, model: str, factor: float, *paths: str) -> dict:
    for path in paths:
        results = fake.scale(results, model, path, factor)
    return results


def _first_repeat_only(results: dict, scenario: str, model: str) -> dict:
    """A copy in which one model's points of one scenario were measured once."""
    out = copy.deepcopy(results)
    out["trials"] = [t for t in out["trials"] if not (
        t["scenario"] == scenario and t["model"] == model and t["repeat"] > 0)]
    return out


def _cli(tmp_path: Path, base: dict, new: dict, *extra: str) -> subprocess.CompletedProcess:
    """`muxbench compare BASE NEW EXTRA...` in a process of its own, as CI runs it:
    this checkout's code (`python -m` from its root), whatever is installed."""
    base_dir, new_dir = fake.write(base, tmp_path / "base"), fake.write(new, tmp_path / "new")
    return procs.run([*MUXBENCH, "compare", str(base_dir), str(new_dir), *extra], timeout=60,
                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _json(tmp_path: Path, base: dict, new: dict, *extra: str) -> tuple[int, dict]:
    proc = _cli(tmp_path, base, new, "--json", *extra)
    return proc.returncode, json.loads(proc.stdout)


def _verdicts(report: dict, verdict: str) -> set[tuple]:
    return {(c["scenario"], c["model"], c["x"], c["metric"])
            for c in report["cells"] if c["verdict"] == verdict}


def _row(text: str, scenario: str, model: str) -> int:
    """Index of the table row of (scenario, model) in the printed output."""
    lines = text.splitlines()
    return next(i for i, line in enumerate(lines) if scenario in line and f" {model} " in line)


SELECT_CELLS = {("sparse", "select", 10, "cpu_per_msg_us"),
                ("sparse", "select", 1000, "cpu_per_msg_us"),
                ("echo_clients", "select", 10, "cpu_per_msg_us"),
                ("echo_clients", "select", 10, "p99_us")}


# -- exit statuses, through the installed command ------------------------------------------

def test_a_tripled_select_on_one_repeat_exits_3_marked_untested(tmp_path):
    base = _quick()
    new = _scaled(base, "select", 3.0, CPU, P99)
    proc = _cli(tmp_path, base, new)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    row = proc.stdout.splitlines()[_row(proc.stdout, "echo_clients", "select")]
    assert "3.00" in row and "untested: too few repeats" in row
    status, report = _json(tmp_path, base, new)
    assert status == 3 == report["exit_status"]
    assert _verdicts(report, "untested") == SELECT_CELLS
    assert report["summary"]["untested"] == 4 and report["summary"]["regression"] == 0


def test_a_tested_regression_wins_over_an_untested_change(tmp_path):
    base = _first_repeat_only(fake.healthy_run(seed=1), "sparse", "select")
    rerun = fake.healthy_run(seed=2, run_id="20261129T170000Z-quick")
    new = _first_repeat_only(_scaled(rerun, "thread", 2.0, CPU), "sparse", "select")
    new = fake.scale(new, "select", CPU, 3.0, scenario="sparse")
    status, report = _json(tmp_path, base, new)
    assert status == 1
    assert _verdicts(report, "regression") == {("echo_clients", "thread", 10, "cpu_per_msg_us")}
    assert _verdicts(report, "untested") == {("sparse", "select", 10, "cpu_per_msg_us"),
                                             ("sparse", "select", 1000, "cpu_per_msg_us")}


def test_a_row_of_untested_cells_stays_on_one_line_for_grep(tmp_path):
    base = _quick()
    new = _scaled(base, "thread", 3.0, CPU, P99, "derived.pss_per_conn_bytes")
    proc = _cli(tmp_path, base, _scaled(new, "thread", 1 / 3, THROUGHPUT))
    assert proc.returncode == 3
    row = proc.stdout.splitlines()[_row(proc.stdout, "echo_clients", "thread")]
    assert row.count("worse, untested: too few repeats") == 4


def test_a_change_under_the_untested_ratio_on_one_repeat_passes_with_a_note(tmp_path):
    base = _quick()
    proc = _cli(tmp_path, base, _scaled(base, "select", 1.5, CPU))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = proc.stdout.splitlines()[_row(proc.stdout, "echo_clients", "select")]
    assert "1.50 ~ (too few repeats)" in row and "untested" not in row


@pytest.mark.parametrize("path, factor", [(CPU, 1 / 3), (THROUGHPUT, 3.0)])
def test_a_large_improvement_on_one_repeat_never_fails(tmp_path, path, factor):
    base = _quick()
    status, report = _json(tmp_path, base, _scaled(base, "select", factor, path))
    assert status == 0 and report["summary"]["untested"] == 0
    assert report["summary"]["too-few"] >= 1


def test_lower_throughput_is_read_as_worse_when_untested(tmp_path):
    base = _quick()
    status, report = _json(tmp_path, base, _scaled(base, "poll", 0.4, THROUGHPUT))
    assert status == 3
    assert _verdicts(report, "untested") == {("echo_clients", "poll", 10, "throughput_msgs_s")}


def test_the_untested_ratio_is_an_option(tmp_path):
    base = _quick()
    new = _scaled(base, "select", 3.0, CPU, P99)
    status, report = _json(tmp_path, base, new, "--untested-ratio", "4")
    assert status == 0 and _verdicts(report, "too-few") == SELECT_CELLS
    assert report["untested_ratio"] == 4.0
    status, _ = _json(tmp_path, base, _scaled(base, "select", 1.5, CPU), "--untested-ratio",
                      "1.4")
    assert status == 3


@pytest.mark.parametrize("value", ["1", "0.5", "abc", "nan", "inf"])
def test_a_bad_untested_ratio_exits_2_with_one_line(tmp_path, value, capsys):
    run_dir = str(fake.write(_quick(), tmp_path / "run"))
    with pytest.raises(SystemExit) as exc:
        main(["compare", run_dir, run_dir, "--untested-ratio", value])
    assert exc.value.code == 2
    assert "--untested-ratio: must be a ratio greater than 1" in capsys.readouterr().err


def test_an_untested_ratio_below_the_threshold_exits_2(tmp_path):
    base = _quick()
    proc = _cli(tmp_path, base, base, "--threshold", "1.5", "--untested-ratio", "1.3")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("muxbench compare: --untested-ratio 1.3 is below")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_help_lists_every_exit_status(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = capsys.readouterr().out
    epilog = text[text.index("Exit status"):]
    for status in range(4):
        assert f"\n  {status} " in epilog
    assert "--untested-ratio" in text and "untested: too few repeats" in text


# -- what CI reads -------------------------------------------------------------------------

def test_json_carries_the_untested_count_and_the_exit_status_meanings(tmp_path):
    base = _quick()
    status, report = _json(tmp_path, base, base)
    assert status == 0 == report["exit_status"]
    assert {"base", "new", "reference", "threshold", "alpha", "summary", "exit_status",
            "cells", "untested_ratio", "exit_statuses"} <= set(report)
    assert report["summary"]["untested"] == 0
    assert set(report["exit_statuses"]) == {"0", "1", "2", "3"}
    assert "too few repeats" in report["exit_statuses"]["3"]


def _junit(tmp_path: Path, base: dict, new: dict) -> tuple[int, ET.Element, dict]:
    xml_path = tmp_path / "out" / "junit.xml"
    xml_path.parent.mkdir()
    status, report = _json(tmp_path, base, new, "--junit", str(xml_path))
    return status, ET.parse(xml_path).getroot(), report


def test_junit_has_one_case_per_cell_and_counts_that_match(tmp_path):
    base = fake.healthy_run(seed=1)
    new = fake.healthy_run(seed=2, run_id="20261129T170000Z-quick")
    new = _scaled(new, "thread", 2.0, CPU)
    new = _scaled(new, "select", 0.5, CPU)
    status, root, report = _junit(tmp_path, base, new)
    assert status == 1
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(report["cells"]) == int(suite.get("tests"))
    names = {(c.get("classname"), c.get("name")) for c in cases}
    assert len(names) == len(cases)
    assert ("muxbench.echo_clients.thread", "cpu_per_msg_us @ clients=10") in names
    for outcome, attribute in (("failure", "failures"), ("error", "errors"),
                               ("skipped", "skipped")):
        assert int(suite.get(attribute)) == sum(c.find(outcome) is not None for c in cases)
    assert int(suite.get("failures")) == report["summary"]["regression"] == 1
    by_name = {(c.get("classname"), c.get("name")): c for c in cases}
    failure = by_name["muxbench.echo_clients.thread", "cpu_per_msg_us @ clients=10"]
    message = failure.find("failure").get("message")
    assert "ratio 2." in message and "p=0.00" in message and "median" in message
    improved = by_name["muxbench.echo_clients.select", "cpu_per_msg_us @ clients=10"]
    assert [child.tag for child in improved] == ["system-out"]  # an improvement passes
    assert improved.find("system-out").text.startswith("improvement: ratio 0.5")
    reference = by_name["muxbench.echo_clients.epoll", "cpu_per_msg_us @ clients=10"]
    assert reference.find("skipped") is not None


def test_junit_marks_an_untested_large_change_as_an_error(tmp_path):
    base = _quick()
    status, root, report = _junit(tmp_path, base, _scaled(base, "select", 3.0, CPU, P99))
    assert status == 3
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    errors = [c for c in suite.findall("testcase") if c.find("error") is not None]
    assert int(suite.get("errors")) == len(errors) == report["summary"]["untested"] == 4
    assert int(suite.get("failures")) == 0
    message = next(c for c in errors if c.get("name") == "p99_us @ clients=10"
                   ).find("error").get("message")
    assert "untested: too few repeats" in message and "ratio 3.00" in message


def test_an_unwritable_junit_file_exits_2_with_one_line(tmp_path):
    base = _quick()
    proc = _cli(tmp_path, base, base, "--junit", str(tmp_path / "absent" / "junit.xml"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("muxbench compare: cannot write")
    assert len(proc.stderr.strip().splitlines()) == 1


def _changed(tmp_path: Path) -> tuple[dict, dict]:
    """5 repeats: thread regressed at echo_clients, poll improved at sparse, rest unchanged."""
    base = fake.healthy_run(seed=1)
    new = fake.healthy_run(seed=2, run_id="20261129T170000Z-quick")
    new = fake.scale(_scaled(new, "thread", 2.0, CPU), "poll", CPU, 0.5, scenario="sparse")
    return base, new


def test_default_output_hides_unchanged_rows_and_all_shows_them(tmp_path):
    base, new = _changed(tmp_path)
    shown = _cli(tmp_path, base, new).stdout
    assert "thread" in shown and " select " not in shown
    assert "unchanged" in shown and "--all" in shown
    every = _cli(tmp_path, base, new, "--all").stdout
    for scenario, model in (("echo_clients", "select"), ("idle", "fork"), ("sparse", "epoll")):
        _row(every, scenario, model)
    # The former name of the default still works.
    assert _cli(tmp_path, base, new, "--changes-only").stdout == shown


def test_regressions_come_before_untested_changes_and_improvements(tmp_path):
    base, new = _changed(tmp_path)
    base = _first_repeat_only(base, "sparse", "select")
    new = fake.scale(_first_repeat_only(new, "sparse", "select"), "select", CPU, 3.0,
                     scenario="sparse")
    proc = _cli(tmp_path, base, new)
    assert proc.returncode == 1
    regression = _row(proc.stdout, "echo_clients", "thread")
    untested = _row(proc.stdout, "sparse", "select")
    improvement = _row(proc.stdout, "sparse", "poll")
    assert regression < untested < improvement


def test_render_takes_show_all_as_its_third_positional_parameter(tmp_path):
    base, new = _changed(tmp_path)
    comparison = compare_runs(base, new)
    texts = []
    for show_all in (False, True):
        path = tmp_path / f"render-{show_all}.txt"
        with path.open("w") as out:
            compare.render(comparison, Console(file=out, width=200), show_all)
        texts.append(path.read_text())
    assert " select " not in texts[0] and " select " in texts[1]
