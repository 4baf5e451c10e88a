"""results/<run-id>/results.json: the one raw record every table and plot is rebuilt from.

The hinge of bench/: the harness (bench/run/) writes runs through this module,
the report and the gate (bench/report/, bench/gate/) read them through it, and
neither side imports the other.  A file is checked as it is read -- its
schema_version, the keys and types every reader relies on -- so that a damaged
or foreign file is refused in one line (ResultsError, fit for
``muxbench ...: <message>``) rather than half understood; and it is written
atomically, so that a killed run never leaves a truncated one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import statistics
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
# Version 2 added what a run on a cluster keeps (below); a version 1 file is the
# same without it, and reads as a run on one machine.
READABLE_VERSIONS = (1, 2)
RESULTS_FILE = "results.json"
LATEST = "latest"

RUN_KEYS = ("schema_version", "run_id", "suite", "status", "started_at", "environment",
            "scenarios", "trials")
TRIAL_KEYS = ("scenario", "model", "protocol", "point", "repeat", "status")
# Beyond these (and those the report reads: server, load, derived), the harness
# stores in each trial: "workers" (the --workers a multi-worker model was given,
# one per server CPU unless the point says; null for the others and in runs
# from before it was recorded); "cleanup" ({graceful, exit_status, leftover_procs --
# processes that outlived the server's stop, killed, remaining_after_kill,
# leftover_fds}); "client" ({cpu_s, source: "rusage"}: the load generator's whole
# CPU, start-up included; "window": what its CPUs did in the window -- busy_s, of
# which generator_s, orchestrator_s and other_s, the work of anyone else, and
# apart from it steal_s, the time the hypervisor took them away -- or null when
# the server or the orchestrator was not pinned apart); "timeline" (seconds from
# the trial's start to each step: ready, load_start, warmup -- the generator's
# load began, and the memory figures begin there --, start, end, load_end,
# stopped); and in "server": pss_baseline_bytes and pss_anon_baseline_bytes
# (before any client connected), pss_anon_mean_bytes (the PSS of anonymous pages,
# from which derived.pss_per_conn_bytes is computed; see bench/sample/sampler.py),
# "window" ("loadgen": CPU between the generator's window lines; "process":
# around its whole run) and sampler_cpu_s (the sampler's own CPU over the trial,
# spent beside the generator); "generator_bound" (true on an invalid trial
# whose only fault was the load generator's saturated CPU: its figures are kept
# and read as bounds, see is_generator_bound; absent in runs from before it was
# recorded, which read as false).  The environment adds skipped_models ({model:
# why}), cpu_accounting and ctx_switch_accounting.
# Version 2, a run on a Dask cluster (bench/cluster/): the environment's
# "cluster" ({address, hosts}), and in each trial "hosts" (the server host's
# entry with its placement and server figures, then each generator host's with
# its own load figures and histograms; server, load and derived hold the merged
# figures, as a local run's), "network" (loopback, veth or nic), "clock_offsets"
# ({host: {offset_ns, error_ns}}) and "window" ({start_ns, end_ns}: the common
# window on the orchestrator's clock).  A local run has none of them.
# A C100K trial (a scenario with a "family", bench/run/capacity.py) may be
# "stopped": the model cannot hold its point, and that is where it breaks, no
# failure of the run.  It then holds "stopped" ({at: the N where the model
# stopped, why, inclusive: N itself is not tried again, before_run: refused or
# skipped without running -- server, load and derived are then null}); one
# stopped in its run keeps its measurements (load.connected: how many it held).
# Such trials also hold "sockstat" ({before, window}: /proc/net/sockstat's TCP
# inuse, orphan, tw, alloc and mem_bytes, bench/sample/sockstat.py) and
# derived.kernel_mem_per_conn_bytes (null where the difference is below noise).
RUN_STATUSES = ("running", "complete", "interrupted")
TRIAL_STATUSES = ("ok", "failed", "invalid", "stopped")

PointKey = tuple[str, str, str, Any]


class ResultsError(Exception):
    """A results file that is missing, unreadable, malformed or of another schema."""


def new_run_id(suite: str, when: dt.datetime | None = None) -> str:
    """`20261129T161500Z-quick`: when the run began, then its suite."""
    when = when or dt.datetime.now(dt.timezone.utc)
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{suite}"


def utc_now() -> str:
    """ISO-8601 UTC timestamp, second precision, as stored in results.json."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_results_atomic(path: str | os.PathLike, data: dict) -> None:
    """Write JSON to a temporary file beside `path`, fsync it, rename it over `path`."""
    _replace(Path(path), [_dumps(data), "\n"])


class ResultsWriter:
    """Saves a growing run as write_results_atomic would, byte for byte, encoding
    each trial once.

    The suite saves after every trial, so that a killed run loses nothing,
    while the next trial's load generator may already be measuring on the
    same CPU: encoding every trial again is a stall that grows with the run
    and lands in that generator's window.  A trial is never changed once it is
    in the list, so its text is kept.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._trials: list[str] = []

    def save(self, data: dict) -> None:
        _replace(self.path, self._chunks(data))

    def _chunks(self, data: dict) -> Iterator[str]:
        """The file's text in pieces: a run's trials are megabytes, not to be copied."""
        yield "{"
        for i, (key, value) in enumerate(data.items()):
            yield f"{',' if i else ''}\n {json.dumps(key)}: "
            if key != "trials":
                yield _dumps(value, 1)
                continue
            for trial in value[len(self._trials):]:
                self._trials.append(_dumps(trial, 2))
            if not self._trials:
                yield "[]"
                continue
            for j, text in enumerate(self._trials):
                yield ",\n  " if j else "[\n  "
                yield text
            yield "\n ]"
        yield "\n}\n"


def _dumps(value: Any, depth: int = 0) -> str:
    """json.dumps(value, indent=1) as it reads nested `depth` levels deep."""
    text = json.dumps(value, indent=1, allow_nan=False, default=_jsonable)
    return text.replace("\n", "\n" + " " * depth) if depth else text


def _replace(path: Path, chunks: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.writelines(chunks)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(value: Any) -> Any:
    # numpy scalars (from percentiles and fits) serialise as plain numbers.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def point_latest(root: str | os.PathLike, run_dir: str | os.PathLike) -> None:
    """Make ROOT/latest a relative symlink to the run directory, replaced atomically."""
    root = Path(root)
    link = root / LATEST
    tmp = root / f".{LATEST}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(Path(run_dir), root), tmp)
    os.replace(tmp, link)


def resolve_run(arg: str | os.PathLike | None = None,
                root: str | os.PathLike = "results") -> Path:
    """The run directory a user names: None is ROOT/latest; else a directory, or a
    run id under ROOT."""
    root = Path(root)
    if arg is None:
        candidate = root / LATEST
        if not candidate.exists():
            raise ResultsError(f"no run found: {candidate} does not exist "
                               "(run `muxbench bench` first, or name a run)")
        return candidate.resolve()
    given = Path(arg)
    if given.is_dir():
        return given.resolve()
    if (root / given).is_dir():
        return (root / given).resolve()
    raise ResultsError(f"no such run: {arg} (neither a directory, a results.json, "
                       f"nor a run id under {root})")


def results_file(arg: str | os.PathLike | None = None,
                 root: str | os.PathLike = "results") -> Path:
    """The results file a user names: a file as given, whatever its name, else
    results.json in resolve_run()'s directory."""
    # A file is taken as named: two runs saved side by side as base.json and
    # new.json must not both turn into their directory's results.json.
    if arg is not None and Path(arg).is_file():
        return Path(arg).resolve()
    return resolve_run(arg, root) / RESULTS_FILE


def load_results(path_or_run_dir: str | os.PathLike) -> dict:
    """A results.json (or a run directory holding one), checked: its schema_version,
    the run's and every trial's keys, and the types its readers rely on
    (TRIAL_TABLES, SCENARIO_TYPES); ResultsError if not."""
    path = Path(path_or_run_dir)
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ResultsError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object at the top level")
    version = data.get("schema_version")
    if version not in READABLE_VERSIONS:
        raise ResultsError(f"{path}: schema_version {version!r} is not supported "
                           f"(this muxbench reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))})")
    _require(data, RUN_KEYS, str(path))
    if data["status"] not in RUN_STATUSES:
        raise ResultsError(f"{path}: unknown run status {data['status']!r}")
    if not isinstance(data["trials"], list) or not isinstance(data["scenarios"], dict):
        raise ResultsError(f"{path}: 'trials' must be a list and 'scenarios' an object")
    if not isinstance(data["environment"], dict):
        raise ResultsError(f"{path}: 'environment' must be an object")
    for name, meta in data["scenarios"].items():
        if not isinstance(meta, dict):
            raise ResultsError(f"{path}: scenario {name!r} must be an object")
        _check_types(meta, SCENARIO_TYPES, f"{path}: scenario {name!r}")
    for index, trial in enumerate(data["trials"]):
        where = f"{path}: trial {index}"
        if not isinstance(trial, dict):
            raise ResultsError(f"{where} is not an object")
        _require(trial, TRIAL_KEYS, where)
        if trial["status"] not in TRIAL_STATUSES:
            raise ResultsError(f"{where}: unknown status {trial['status']!r}")
        _check_trial(trial, where)
        x = data["scenarios"].get(trial["scenario"], {}).get("x")
        if x is not None and x not in trial["point"]:
            raise ResultsError(f"{where}, point: no {x!r}, the x of {trial['scenario']!r}")
    return data


Types = dict[str, tuple[type, ...]]
NUMBER = (int, float)
# What every reader of a trial relies on, beyond the keys being there.
TRIAL_TYPES: Types = {
    "scenario": (str,), "model": (str,), "protocol": (str,), "point": (dict,),
    "repeat": (int,), "reason": (str, type(None)),
    "server": (dict, type(None)), "derived": (dict, type(None)), "load": (dict, type(None)),
    "client": (dict, type(None)),
    "hosts": (list, type(None)), "network": (str, type(None)),
    "clock_offsets": (dict, type(None)), "window": (dict, type(None)),
}
CLIENT_TYPES: Types = {"window": (dict, type(None))}
# A figure absent or null was not recorded (runs from before steal_s was kept).
WINDOW_TYPES: Types = dict.fromkeys(
    ("busy_s", "generator_s", "orchestrator_s", "other_s", "steal_s"), (*NUMBER, type(None)))
# Each table with the path to the object it checks; an object that is absent or
# null there was already allowed or refused by its parent's table.
TRIAL_TABLES: tuple[tuple[tuple[str, ...], Types], ...] = (
    ((), TRIAL_TYPES), (("client",), CLIENT_TYPES), (("client", "window"), WINDOW_TYPES))
# A scenario's x names the point parameter its trials are grouped and plotted by;
# every point parameter is a number (bench/run/scenarios.py), and the x value is part
# of a dict key (group_points): a list or an object in either place is damage.
SCENARIO_TYPES: Types = {"x": (str,)}
POINT_VALUE = NUMBER


def _check_trial(trial: dict, where: str) -> None:
    bound = trial.get("generator_bound")
    if bound is not None and not isinstance(bound, bool):
        raise ResultsError(f"{where}: 'generator_bound' must be true or false, not {bound!r}")
    for path, types in TRIAL_TABLES:
        obj = _at(trial, path)
        if isinstance(obj, dict):
            _check_types(obj, types, f"{where}, {'.'.join(path)}" if path else where)
    for i, host in enumerate(trial.get("hosts") or []):
        if not isinstance(host, dict) or not isinstance(host.get("host"), str):
            raise ResultsError(f"{where}, hosts[{i}]: expected an object with a 'host' name")
    # A point's keys are its scenario's parameters, so its table is made from them.
    point = trial["point"]
    _check_types(point, dict.fromkeys(point, POINT_VALUE), f"{where}, point")


def _check_types(obj: dict, types: Types, where: str) -> None:
    for key, allowed in types.items():
        value = obj.get(key)
        if isinstance(value, bool) or not isinstance(value, allowed):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ResultsError(f"{where}: {key!r} must be {names}, not {value!r}")


def _reject_constant(name: str) -> float:
    # json accepts NaN and Infinity, which no measurement produces and no
    # table or plot can show: a file holding them was damaged.
    raise ValueError(f"{name} is not a number a run can hold")


def _require(obj: dict, keys: Iterable[str], where: str) -> None:
    missing = [key for key in keys if key not in obj]
    if missing:
        raise ResultsError(f"{where}: missing key(s) {', '.join(missing)}")


def _at(obj: Any, path: Iterable[str]) -> Any:
    """The value at a path of keys into nested dicts; None where a step is missing."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def metric(trial: dict, path: str) -> float | None:
    """The number at a dotted path into one trial ("derived.cpu_per_msg_us"); None
    when any step is missing or null, or the value is not a number."""
    value = _at(trial, path.split("."))
    if isinstance(value, bool) or not isinstance(value, NUMBER):
        return None
    return value


def is_generator_bound(trial: dict) -> bool:
    """An invalid trial kept as a bound: the server did at least its throughput,
    and only the load generator's CPU stopped it doing more (bench/run/outcome.py).
    Still invalid, so every reader of "ok" trials leaves it out."""
    return trial["status"] == "invalid" and trial.get("generator_bound") is True


def summary(values: Iterable[float | None]) -> dict:
    """{median, min, max, n} of the values that are not None (all None, n 0, if none)."""
    present = [v for v in values if v is not None]
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(present), "min": min(present),
            "max": max(present), "n": len(present)}


def x_value(results: dict, trial: dict) -> Any:
    """The trial's value on its scenario's x axis."""
    scenario = results["scenarios"].get(trial["scenario"], {})
    return trial["point"].get(scenario.get("x"))


def group_points(results: dict, statuses: Iterable[str] = ("ok",)) -> dict[PointKey, list[dict]]:
    """{(scenario, model, protocol, x): [trial, ...]}, every repeat kept, in file
    order; only the trials whose status is in `statuses`."""
    wanted = set(statuses)
    grouped: dict[PointKey, list[dict]] = {}
    for trial in results["trials"]:
        if trial["status"] in wanted:
            key = (trial["scenario"], trial["model"], trial["protocol"], x_value(results, trial))
            grouped.setdefault(key, []).append(trial)
    return grouped


points = group_points


def point_summary(results: dict, path: str,
                  statuses: Iterable[str] = ("ok",)) -> dict[PointKey, dict]:
    """{(scenario, model, protocol, x): summary() of the metric over its repeats}."""
    return {key: summary(metric(t, path) for t in trials)
            for key, trials in group_points(results, statuses).items()}
