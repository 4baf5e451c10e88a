"""`muxbench compare`: real changes are flagged, noise and machine speed are not."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from bench.gate import compare, judge
from bench.results import load_results
from muxbench.cli import main
from tests import fake_results as fake
from tests.support import MUXBENCH, ROOT

CPU = "derived.cpu_per_msg_us"


def _compare(tmp_path: Path, base: dict, new: dict, *extra: str) -> tuple[int, dict]:
    """Exit status and --json verdicts of `muxbench compare BASE NEW`."""
    base_dir = fake.write(base, tmp_path / "base")
    new_dir = fake.write(new, tmp_path / "new")
    json_path = tmp_path / "verdicts.json"
    status = compare.run(_args(str(base_dir), str(new_dir), "--json", *extra),
                         out=json_path.open("w"))
    return status, json.loads(json_path.read_text())


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    compare.configure(parser)
    return parser.parse_args(argv)


def _cell(report: dict, model: str, metric: str) -> dict:
    return next(c for c in report["cells"] if c["model"] == model and c["metric"] == metric
                and c["scenario"] == "echo_clients")


def _cpu(results: dict, **per_model: list[float]) -> dict:
    """A copy with echo_clients CPU/msg of each named model set repeat by repeat."""
    for model, values in per_model.items():
        results = fake.set_values(results, "echo_clients", model, CPU, values)
    return results


def _verdicts(report: dict, verdict: str) -> list[tuple]:
    return [(c["scenario"], c["model"], c["x"], c["metric"])
            for c in report["cells"] if c["verdict"] == verdict]


@pytest.fixture
def base() -> dict:
    return fake.healthy_run(seed=1)


@pytest.fixture
def rerun() -> dict:
    """The same code measured again: same medians, other jitter."""
    return fake.healthy_run(seed=2, run_id="20261129T170000Z-quick")


def test_a_run_against_itself_exits_0_with_no_change(tmp_path, base):
    status, report = _compare(tmp_path, base, base)
    assert status == 0
    assert report["summary"]["regression"] == report["summary"]["improvement"] == 0
    assert report["summary"]["noise"] > 10


def test_one_model_with_doubled_cpu_per_message_exits_1(tmp_path, base, rerun):
    status, report = _compare(tmp_path, base, fake.scale(rerun, "thread", CPU, 2.0))
    assert status == 1
    assert _verdicts(report, "regression") == [("echo_clients", "thread", 10, "cpu_per_msg_us")]
    cell = next(c for c in report["cells"] if c["verdict"] == "regression")
    assert 1.8 < cell["ratio"] < 2.2 and cell["p_value"] < 0.01


def test_a_uniformly_slower_machine_is_not_a_regression(tmp_path, base, rerun):
    slower = rerun
    for model in {t["model"] for t in rerun["trials"]}:
        slower = fake.scale(slower, model, CPU, 3.0)
        slower = fake.scale(slower, model, "derived.p99_us", 3.0)
        slower = fake.scale(slower, model, "derived.throughput_msgs_s", 1 / 3)
    status, report = _compare(tmp_path, base, slower)
    assert status == 0 and report["summary"]["regression"] == 0
    # Without the reference the same data is a regression everywhere: normalisation matters.
    status, _ = _compare(tmp_path, base, slower, "--reference", "none")
    assert status == 1


def test_lower_throughput_is_a_regression_and_lower_cpu_an_improvement(tmp_path, base, rerun):
    new = fake.scale(rerun, "poll", "derived.throughput_msgs_s", 0.5)
    new = fake.scale(new, "select", CPU, 0.5, scenario="echo_clients")
    status, report = _compare(tmp_path, base, new)
    assert status == 1
    assert _verdicts(report, "regression") == [("echo_clients", "poll", 10, "throughput_msgs_s")]
    assert _verdicts(report, "improvement") == [("echo_clients", "select", 10, "cpu_per_msg_us")]


def test_only_improvements_exit_0(tmp_path, base, rerun):
    status, report = _compare(tmp_path, base, fake.scale(rerun, "thread", CPU, 0.5))
    assert status == 0 and len(_verdicts(report, "improvement")) == 1


def test_memory_is_compared_as_measured_with_a_noise_floor(tmp_path, base, rerun):
    pss = "derived.pss_per_conn_bytes"
    new = fake.scale(rerun, "thread", pss, 2.0, scenario="echo_clients")  # 24 -> 48 KiB
    new = fake.scale(new, "poll", pss, 2.5, scenario="echo_clients")  # 3 -> 7.5 KiB: noise
    new = fake.scale(new, "epoll", pss, 20.0, scenario="idle")  # 2.5 -> 50 KiB, the reference
    status, report = _compare(tmp_path, base, new)
    assert status == 1
    assert sorted(_verdicts(report, "regression")) == [
        ("echo_clients", "thread", 10, "pss_per_conn_bytes"),
        ("idle", "epoll", 100, "pss_per_conn_bytes")]


def test_a_significant_change_under_the_threshold_is_noise(tmp_path, base):
    # Every repeat 1.2x its base counterpart: significant, but smaller than 1.25.
    status, report = _compare(tmp_path, base, fake.scale(base, "thread", CPU, 1.2))
    cell = _cell(report, "thread", "cpu_per_msg_us")
    assert status == 0 and cell["verdict"] == "noise"
    assert cell["p_value"] < 0.01 and cell["ratio"] == pytest.approx(1.2)


def test_a_large_but_inconsistent_change_is_noise(tmp_path, base):
    status, report = _compare(tmp_path, _cpu(base, thread=[10, 11, 12, 13, 14]),
                              _cpu(base, thread=[8, 9, 16, 17, 18]))
    cell = _cell(report, "thread", "cpu_per_msg_us")
    assert status == 0 and cell["verdict"] == "noise"
    assert cell["ratio"] > 1.25 and cell["p_value"] > 0.01


def test_each_repeat_is_read_against_the_reference_beside_it(tmp_path, base):
    # Measured (echo_size, uvloop against epoll, CPU/msg in us, 16:38 and 16:54 runs):
    # the baseline's epoll was high in three repeats.  Against its median every new
    # repeat looks worse (p = 0.004); repeat by repeat the spread shows and it is noise.
    old = _cpu(base, thread=[16.1, 16.8, 17.4, 16.4, 19.5], epoll=[25.6, 19.3, 18.0, 23.8, 25.7])
    new = _cpu(base, thread=[26.4, 19.6, 22.9, 24.2, 22.3], epoll=[24.3, 16.3, 16.6, 33.0, 22.1])
    status, report = _compare(tmp_path, old, new)
    cell = _cell(report, "thread", "cpu_per_msg_us")
    assert status == 0 and cell["verdict"] == "noise"
    assert cell["ratio"] > 1.25 and cell["p_value"] > 0.01


@pytest.mark.parametrize("factor, status, verdict, shown", [
    (1.6, 0, "too-few", "~ (too few repeats)"),  # under --untested-ratio: a note
    (2.5, 3, "untested", "untested: too few repeats"),  # past it: fails, on its own status
])
def test_too_few_repeats_are_shown_not_silently_passed(tmp_path, factor, status, verdict,
                                                        shown):
    base = fake.healthy_run(repeats=3, seed=1)
    new = fake.scale(fake.healthy_run(repeats=3, seed=2), "thread", CPU, factor)
    got, report = _compare(tmp_path, base, new)
    assert got == status
    assert _verdicts(report, verdict) == [("echo_clients", "thread", 10, "cpu_per_msg_us")]
    text = _table(tmp_path, base, new)
    assert shown in text and "5 repeats per side" in text


def _mark(results: dict, model: str, status: str, reason: str) -> None:
    for t in results["trials"]:
        if t["model"] == model and t["scenario"] == "echo_clients":
            t["status"], t["reason"] = status, reason


def test_a_point_whose_trials_all_failed_in_new_is_a_regression(tmp_path, base, rerun):
    _mark(rerun, "poll", "failed", "server exited with status 1")
    status, report = _compare(tmp_path, base, rerun)
    assert status == 1
    assert _verdicts(report, "regression") == [("echo_clients", "poll", 10, "status")]


def test_a_point_with_only_invalid_trials_in_new_is_not_a_regression(tmp_path, base, rerun):
    _mark(rerun, "poll", "invalid", "load generator fell behind its send schedule")
    status, report = _compare(tmp_path, base, rerun)
    assert status == 0
    cell = _cell(report, "poll", "status")
    assert cell["verdict"] == "n/a" and cell["note"] == "only invalid trials in NEW"


def test_min_p_value_matches_the_exact_mann_whitney_floor():
    assert judge.min_p_value(5, 5) == pytest.approx(1 / 252)
    assert judge.min_p_value(5, 5) < 0.01 <= judge.min_p_value(3, 3)


@pytest.mark.parametrize("alpha, repeats", [(0.01, 5), (0.05, 4), (0.5, 2), (0.6, 1)])
def test_repeats_needed_is_the_fewest_whose_floor_is_under_alpha(alpha, repeats):
    assert judge.repeats_needed(alpha) == repeats
    assert judge.min_p_value(repeats, repeats) < alpha
    assert repeats == 1 or judge.min_p_value(repeats - 1, repeats - 1) >= alpha


def _table(tmp_path: Path, base: dict, new: dict) -> str:
    out = tmp_path / "table.txt"
    with out.open("w") as stream:
        compare.run(_args(str(fake.write(base, tmp_path / "tb")),
                          str(fake.write(new, tmp_path / "tn"))), out=stream)
    return out.read_text()


def test_changes_only_prints_no_empty_table(tmp_path, base, capsys):
    run_dir = str(fake.write(base, tmp_path / "run"))
    assert main(["compare", run_dir, run_dir, "--changes-only"]) == 0
    out = capsys.readouterr().out
    assert "scenario" not in out and "0 regression(s)" in out


def test_table_marks_the_regression_for_people(tmp_path, base, rerun):
    text = _table(tmp_path, base, fake.scale(rerun, "thread", CPU, 2.0))
    row = next(line for line in text.splitlines() if "thread" in line and "echo_clients" in line)
    assert "worse" in row and "p=0.00" in row
    assert "1 regression(s)" in text


@pytest.mark.parametrize("breakage, words", [
    (lambda d: (d / "results.json").unlink(), "cannot read"),
    (lambda d: (d / "results.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "results.json").write_text(json.dumps({"schema_version": 99})),
     "schema_version 99"),
    (lambda d: (d / "results.json").write_text(json.dumps({"schema_version": 1})),
     "missing key"),
])
def test_unusable_input_exits_2_with_one_line(tmp_path, base, capsys, breakage, words):
    good = fake.write(base, tmp_path / "good")
    bad = fake.write(base, tmp_path / "bad")
    breakage(bad)
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muxbench compare: ") and words in err
    assert len(err.strip().splitlines()) == 1


def test_the_command_reports_a_missing_run_without_a_traceback(tmp_path, base):
    good = fake.write(base, tmp_path / "good")
    proc = subprocess.run([*MUXBENCH, "compare", str(good), str(tmp_path / "absent")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("muxbench compare: no such run")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_result_files_side_by_side_are_each_read_as_named(tmp_path, base, rerun):
    # base.json and new.json in one directory: neither may be taken for results.json.
    (tmp_path / "base.json").write_text(json.dumps(base))
    (tmp_path / "new.json").write_text(json.dumps(fake.scale(rerun, "thread", CPU, 2.0)))
    assert main(["compare", str(tmp_path / "base.json"), str(tmp_path / "new.json")]) == 1
    assert main(["compare", str(tmp_path / "new.json"), str(tmp_path / "new.json")]) == 0


def test_an_incomplete_run_is_compared_with_a_note(tmp_path, base, rerun, capsys):
    rerun["status"] = "interrupted"
    status, _ = _compare(tmp_path, base, rerun)
    assert status == 0
    assert "NEW run 20261129T170000Z-quick is interrupted" in capsys.readouterr().err


def test_runs_with_nothing_in_common_exit_2(tmp_path, base, capsys):
    other = fake.run([fake.trial("churn", "epoll", {"clients": 5}, 0)])
    assert main(["compare", str(fake.write(base, tmp_path / "a")),
                 str(fake.write(other, tmp_path / "b"))]) == 2
    assert "nothing in common" in capsys.readouterr().err


@pytest.mark.parametrize("option, wanted", [
    (["--threshold", "0.9"], "a ratio greater than 1"),
    (["--threshold", "abc"], "a ratio greater than 1"),
    (["--alpha", "2"], "between 0 and 1"),
    (["--alpha", "nan"], "between 0 and 1"),
])
def test_bad_options_exit_2(tmp_path, base, capsys, option, wanted):
    run_dir = str(fake.write(base, tmp_path / "run"))
    with pytest.raises(SystemExit) as exc:
        main(["compare", run_dir, run_dir, *option])
    assert exc.value.code == 2
    assert f"{option[0]}: must be {wanted}" in capsys.readouterr().err.splitlines()[-1]


def test_help_explains_repeats_and_exit_status(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "5 repeats per side" in text and "Exit status" in text


# -- muxbench regress judges with this module: bad input is refused the same way ------

def test_regress_without_a_baseline_exits_2(tmp_path, capsys):
    from bench.gate import regress

    assert regress.main(["--baseline", str(tmp_path / "none"), "--out",
                         str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("muxbench regress: cannot read") and len(err.splitlines()) == 1


# -- the committed baseline: real data, 5 repeats ------------------------------------

BASELINE = ROOT / "results" / "baseline"


def test_the_committed_baseline_against_itself_exits_0(capsys):
    assert main(["compare", str(BASELINE), str(BASELINE), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["regression"] == summary["improvement"] == summary["too-few"] == 0
    assert summary["untested"] == 0
    assert summary["noise"] > 50


def test_the_committed_baseline_with_one_model_cpu_doubled_exits_1(tmp_path, capsys):
    doubled = fake.scale(load_results(BASELINE), "thread", CPU, 2.0)
    new_dir = fake.write(doubled, tmp_path / "doubled")
    assert main(["compare", str(BASELINE), str(new_dir), "--json"]) == 1
    cells = json.loads(capsys.readouterr().out)["cells"]
    flagged = {(c["model"], c["metric"]) for c in cells if c["verdict"] == "regression"}
    assert flagged == {("thread", "cpu_per_msg_us")}
