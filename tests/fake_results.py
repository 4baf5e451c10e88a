"""Small results dicts shaped exactly like results.json (bench/results.py).

They let the compare and invariant tests state a precise situation (one model
twice as costly, a spinning server, a lost message) and check the verdict,
without waiting for a benchmark run.  Values carry a deterministic spread so the
statistics see repeats that differ, as real ones do.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

from bench.run.outcome import classify

SCENARIOS = {
    "idle": {"title": "Idle clients", "x": "clients", "x_label": "idle clients",
             "workload": "idle", "protocol": "echo", "log_x": True},
    "sparse": {"title": "Few active among many idle", "x": "idle", "x_label": "idle fds",
               "workload": "sparse", "protocol": "echo", "log_x": True},
    "echo_clients": {"title": "Echo vs clients", "x": "clients", "x_label": "clients",
                     "workload": "echo", "protocol": "echo", "log_x": True},
}

# Per-model medians that satisfy every invariant, roughly as measured on a 2-vCPU VM.
IDLE_CPU = {"polling": 0.98, "select": 0.002, "poll": 0.002, "epoll": 0.002,
            "thread": 0.003, "fork": 0.004}
PSS_PER_CONN = {"polling": 3_000.0, "select": 3_000.0, "poll": 3_000.0, "epoll": 2_500.0,
                "thread": 24_000.0, "fork": 700_000.0}
SPARSE_CPU = {("select", 10): 9.0, ("select", 1000): 40.0, ("poll", 10): 9.0,
              ("poll", 1000): 30.0, ("epoll", 10): 8.0, ("epoll", 1000): 8.4}
ECHO_CPU = {"epoll": 7.0, "poll": 7.5, "select": 7.6, "thread": 10.0}
# A load generator that ran to its end (classify's `outcome`), having seen errors.
FINISHED = {"timed_out": False, "exit_status": 1, "stderr": "", "timeout_s": 30.0}


def load_object(clients: int, **over: object) -> dict:
    """A `muxbench load --json` object with the integrity counters at zero."""
    obj = {"workload": "echo", "mode": "closed", "clients": clients, "connected": clients,
           "sent": 1000, "received": 1000, "errors": 0, "errors_by_kind": {},
           "lost": 0, "corrupted": 0, "duplicated": 0, "reordered": 0,
           "throughput_msgs_s": 1000.0, "valid": True, "invalid_reason": None}
    obj.update(over)
    return obj


def trial(scenario: str, model: str, point: dict, repeat: int, *, cpu_util: float = 0.01,
          fds: int | None = None, derived: dict | None = None, load: dict | None = None,
          status: str = "ok", reason: str | None = None, sleeps: int = 0) -> dict:
    clients = point.get("clients", 1) + point.get("idle", 0)
    return {
        "scenario": scenario, "model": model, "protocol": "echo", "point": dict(point),
        "repeat": repeat, "status": status, "reason": reason,
        "started_at": "2026-11-29T16:00:00+00:00", "duration_s": 2.0,
        "server": {"cpu_s": cpu_util * 2.0, "wall_s": 2.0, "cpu_util": cpu_util,
                   "ctx_voluntary": sleeps, "fds_peak": clients + 5 if fds is None else fds},
        "derived": {"cpu_per_msg_us": None, "ctx_per_msg": None, "pss_per_conn_bytes": None,
                    "throughput_msgs_s": None, "p99_us": None, **(derived or {})},
        "load": load if load is not None else load_object(clients),
        "cleanup": {"leftover_procs": 0, "leftover_fds": 0, "left_after_sigterm": 0,
                    "graceful": True},
    }


def run(trials: list[dict], run_id: str = "20261129T160000Z-quick") -> dict:
    return {
        "schema_version": 1, "run_id": run_id, "suite": "quick", "status": "complete",
        "started_at": "2026-11-29T16:00:00+00:00", "finished_at": "2026-11-29T16:10:00+00:00",
        "environment": {"cpu_model": "test", "cpus": 2},
        "scenarios": copy.deepcopy(SCENARIOS), "trials": trials,
    }


def healthy_run(repeats: int = 5, seed: int = 1, run_id: str = "20261129T160000Z-quick") -> dict:
    """A run in which every invariant holds and every compare metric is present."""
    rnd = random.Random(seed)

    def jitter(value: float) -> float:
        return value * rnd.uniform(0.95, 1.05)

    trials = []
    for r in range(repeats):
        for model in IDLE_CPU:
            trials.append(trial("idle", model, {"clients": 100}, r,
                                cpu_util=jitter(IDLE_CPU[model]),
                                derived={"pss_per_conn_bytes": jitter(PSS_PER_CONN[model])}))
        for model in ("select", "poll", "epoll"):
            refused = model == "select"
            load = load_object(1100, errors=76 if refused else 0,
                               errors_by_kind={"ECONNRESET": 76} if refused else {})
            # Status and reason as the harness gives them: select's ceiling is "ok".
            status, reason = classify("idle", load, FINISHED, None, "")
            trials.append(trial("idle", model, {"clients": 1100}, r, load=load,
                                fds=1024 if refused else 1105, status=status, reason=reason,
                                cpu_util=jitter(IDLE_CPU[model])))
        for (model, idle), cpu in SPARSE_CPU.items():
            trials.append(trial("sparse", model, {"idle": idle, "active": 1}, r,
                                derived={"cpu_per_msg_us": jitter(cpu)}))
        for model, cpu in ECHO_CPU.items():
            trials.append(trial("echo_clients", model, {"clients": 10}, r, cpu_util=0.9,
                                derived={"cpu_per_msg_us": jitter(cpu),
                                         "p99_us": jitter(120.0),
                                         "throughput_msgs_s": jitter(20_000.0),
                                         "pss_per_conn_bytes": jitter(PSS_PER_CONN[model])}))
    return run(trials, run_id)


def holder(trial: dict, path: str) -> tuple[dict, str]:
    """(the dict holding a dotted path's last key, that key)."""
    *parents, leaf = path.split(".")
    for part in parents:
        trial = trial[part]
    return trial, leaf


def scale(results: dict, model: str, path: str, factor: float,
          scenario: str | None = None) -> dict:
    """A copy with one model's metric (dotted path) multiplied by factor."""
    out = copy.deepcopy(results)
    for t in out["trials"]:
        if t["model"] == model and (scenario is None or t["scenario"] == scenario):
            obj, leaf = holder(t, path)
            if obj.get(leaf) is not None:
                obj[leaf] *= factor
    return out


def write(results: dict, directory: Path) -> Path:
    """Store results as DIRECTORY/results.json; returns the directory (a run dir)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results))
    return directory


def set_values(results: dict, scenario: str, model: str, path: str,
               values: list[float]) -> dict:
    """A copy in which repeat i of one model's points has the metric (dotted path) values[i]."""
    out = copy.deepcopy(results)
    for t in out["trials"]:
        if t["model"] == model and t["scenario"] == scenario:
            obj, leaf = holder(t, path)
            obj[leaf] = values[t["repeat"]]
    return out
