"""From the workers' raw results to the one JSON object of `muxbench load --json`.

Its keys begin with those every consumer relies on (sent, received, errors,
throughput_msgs_s, latency_us with p50/p90/p99/p999/max); the rest (self_check,
hdr_workers, message, ...) add what a careful reader needs.  This is also where a
run is judged: `valid` is false when the generator itself was the bottleneck,
and `exit_status` says whether the run was clean (0), had errors or integrity
failures or was invalid (1), could not reach the server at all (2), or was
cut short by Ctrl-C or SIGTERM (130).
"""

from __future__ import annotations

import os

import numpy as np

from loadgen.engine import Config, Outcome
from loadgen.record import as_numpy, empty_summary, hdr_encode, hdr_merge, summarize
from loadgen.schedule import LATE_NS, MAX_SELF_LATE_FRACTION

# The generator counts as saturated above this share of the CPUs it may use.
MAX_CPU_UTIL = 0.95
COUNTERS = ("sent", "received", "lost", "corrupted", "duplicated", "reordered")


def _sum(results: list[dict], key: str) -> int:
    return sum(r.get(key) or 0 for r in results)


def _cpus_usable(cfg: Config, procs: int) -> int:
    cpus = cfg.cpus or os.sched_getaffinity(0)
    return max(1, min(procs, len(cpus)))


def _histograms(results: list[dict], key: str) -> tuple[np.ndarray, list[str | None]]:
    """All samples of one kind, and each worker's encoded histogram."""
    per_worker = [as_numpy([r.get(key, b"")]) for r in results]
    merged = np.concatenate(per_worker) if per_worker else np.empty(0, dtype=np.int64)
    return merged, [hdr_encode(values) for values in per_worker]


def _judge(outcome: Outcome, util: float, own_lag: np.ndarray) -> dict[str, str]:
    """{kind: reason} of everything that makes the run invalid; the kinds
    ("saturated", "behind_schedule", "workers_lost") go into the output as
    invalid_kinds, so that a reader can tell a generator that merely ran out of
    CPU from one that could not keep its schedule or lost a worker."""
    reasons = {}
    if util >= MAX_CPU_UTIL:
        reasons["saturated"] = f"load generator saturated its CPUs ({util:.0%} busy)"
    own_late = int((own_lag > LATE_NS).sum())
    if own_lag.size and own_late > MAX_SELF_LATE_FRACTION * own_lag.size:
        reasons["behind_schedule"] = (f"load generator fell behind its send schedule "
                                      f"({own_late} of {own_lag.size} sends more than "
                                      f"{LATE_NS // 1000} µs late)")
    if outcome.missing_workers:
        reasons["workers_lost"] = (f"{outcome.missing_workers} worker(s) died or timed out "
                                   "without results")
    return reasons


def build(cfg: Config, outcome: Outcome) -> dict:
    results = outcome.results
    tally = {name: sum(r["tally"][name] for r in results) for name in COUNTERS}
    errors: dict[str, int] = {}
    for r in results:
        for kind, n in r["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
    latency, latency_hdrs = _histograms(results, "latency")
    service, service_hdrs = _histograms(results, "service")
    own_lag = as_numpy([r.get("own_lag", b"") for r in results])
    cpu_s = _sum(results, "cpu_ns") / 1e9
    duration = outcome.duration_s if outcome.interrupted else cfg.duration
    util = cpu_s / (duration * _cpus_usable(cfg, outcome.procs)) if duration else 0.0
    reasons = _judge(outcome, util, own_lag)
    open_loop = cfg.rate is not None and cfg.workload == "echo"
    out = {
        "workload": cfg.workload,
        "mode": "open" if cfg.rate is not None and cfg.workload in ("echo", "chat") else "closed",
        "clients": cfg.clients, "connected": outcome.connected, "size": cfg.size,
        "rate": cfg.rate, "arrival": cfg.arrival if cfg.rate is not None else None,
        "depth": cfg.depth, "duration_s": duration, "warmup_s": cfg.warmup,
        "drain_s": cfg.drain, "procs": outcome.procs, "seed": cfg.seed,
        **tally,
        "errors": sum(errors.values()), "errors_by_kind": errors,
        "throughput_msgs_s": tally["received"] / duration if duration else 0.0,
        "latency_us": summarize(latency) if cfg.workload != "idle" else empty_summary(),
        "service_time_us": summarize(service) if open_loop else None,
        "late_sends": _sum(results, "late_sends"),
        "max_send_lag_us": (max((r.get("max_lag_ns") or 0 for r in results), default=0) / 1e3
                            if cfg.rate is not None else None),
        "deliveries": None, "expected_deliveries": None,
        "connections_per_s": None, "connect_latency_us": None,
        "active": None, "idle": None,
        "client_cpu_s": cpu_s, "client_cpu_util": util,
        "valid": not reasons, "invalid_reason": "; ".join(reasons.values()) or None,
        "invalid_kinds": list(reasons),
        "self_check": {
            "cpu_util_limit": MAX_CPU_UTIL,
            "cpus_usable": _cpus_usable(cfg, outcome.procs),
            "own_sends": int(own_lag.size),
            "own_late_sends": int((own_lag > LATE_NS).sum()),
            "own_send_lag_p99_us": (float(np.percentile(own_lag, 99)) / 1e3
                                    if own_lag.size else None),
        },
        "window": _window(outcome),
        "interrupted": outcome.interrupted,
        "hdr": {"latency": hdr_merge(latency_hdrs), "service_time": hdr_merge(service_hdrs)},
        "hdr_workers": [{"latency": lat, "service_time": svc}
                        for lat, svc in zip(latency_hdrs, service_hdrs, strict=True)],
    }
    _workload_fields(cfg, outcome, out)
    out["connect"] = None if cfg.workload == "churn" else _connect(cfg, outcome, errors)
    out["generator_memory"] = _memory(outcome)
    out["message"], out["exit_status"] = _verdict(cfg, outcome, out)
    return out


def _connect(cfg: Config, outcome: Outcome, errors: dict[str, int]) -> dict:
    """How the connections were made: wanted, held (answered the probe), retried, failed."""
    reports = outcome.ready
    held = sum(r["held"] for r in reports)
    failed = cfg.clients - held
    # Connections that got through but did not answer the probe count as failed too.
    reason = ", ".join(f"{k} x{n}" for k, n in sorted(errors.items())) if failed else None
    return {
        "wanted": cfg.clients, "held": held, "retries": _sum(reports, "retries"),
        "failed": failed, "reason": reason or ("worker lost" if failed else None),
        "seconds": outcome.connect_s,
        "rate_per_s": held / outcome.connect_s if outcome.connect_s else None,
        "connect_rate": cfg.connect_rate, "sources": cfg.sources,
        "nofile_limit": cfg.nofile_limit,
    }


def _memory(outcome: Outcome) -> dict:
    """The generator's memory once every connection was up: parent and workers.

    A worker is forked from the parent, so what it shares with it is counted
    in PSS (split between them) but not in USS, which is what the worker made
    of its own: the connections' bookkeeping, above all.  Per connection,
    then, is the workers' USS over the connections held; the parent's
    interpreter is the same for one connection or a hundred thousand.
    """
    workers_uss = _sum(outcome.ready, "uss_bytes")
    held = outcome.connected
    return {"pss_bytes": outcome.parent_memory[0] + _sum(outcome.ready, "pss_bytes"),
            "uss_bytes": outcome.parent_memory[1] + workers_uss,
            "workers_uss_bytes": workers_uss,
            "uss_per_connection_bytes": workers_uss / held if held else None}


def _window(outcome: Outcome) -> dict:
    """The window's edges on this host's clock, in seconds and in nanoseconds
    (the latter exact enough to compare hosts' windows: bench/cluster/clock.py)."""
    if outcome.window is None:
        return dict.fromkeys(("start_unix", "end_unix", "start_ns", "end_ns"))
    offset_ns = int(outcome.clock_offset * 1e9)
    start, end = outcome.window
    return {"start_unix": start / 1e9 + outcome.clock_offset,
            "end_unix": end / 1e9 + outcome.clock_offset,
            "start_ns": start + offset_ns, "end_ns": end + offset_ns}


def _workload_fields(cfg: Config, outcome: Outcome, out: dict) -> None:
    results = outcome.results
    if cfg.workload == "chat":
        expected = out["sent"] * outcome.connected
        out["deliveries"] = out["received"]
        out["expected_deliveries"] = expected
        out["lost"] = max(0, expected - out["received"] - out["corrupted"])
    elif cfg.workload == "churn":
        connects = as_numpy([r.get("connect", b"") for r in results])
        out["connections_per_s"] = _sum(results, "cycles") / out["duration_s"]
        out["connect_latency_us"] = summarize(connects)
        # Connections come and go: count those established inside the window.
        out["connected"] = int(connects.size)
    elif cfg.workload in ("sparse", "idle"):
        active = min(cfg.active, outcome.connected) if cfg.workload == "sparse" else 0
        out["active"] = _sum(results, "active_connected") if cfg.workload == "sparse" else active
        out["idle"] = outcome.connected - out["active"]


def _verdict(cfg: Config, outcome: Outcome, out: dict) -> tuple[str | None, int]:
    """A one-line message for anything wrong, and the exit status."""
    target = f"{cfg.host}:{cfg.port}"
    errors = out["errors_by_kind"]
    if not out["connected"]:
        kinds = ", ".join(f"{k} x{n}" for k, n in sorted(errors.items())) or "no answer"
        return f"cannot connect to {target}: {kinds}", 2
    problems = []
    if out["interrupted"]:
        problems.append(f"interrupted: the window was cut short at {out['duration_s']:.2f} s "
                        f"of {cfg.duration:g} s; the results cover that much")
    if out["connected"] < cfg.clients and cfg.workload != "churn":
        problems.append(f"{cfg.clients - out['connected']} of {cfg.clients} connections failed")
    if out["errors"]:
        problems.append("errors: " + ", ".join(f"{k} x{n}" for k, n in sorted(errors.items())))
    bad = {k: out[k] for k in ("lost", "corrupted", "duplicated", "reordered") if out[k]}
    if bad:
        problems.append("integrity: " + ", ".join(f"{k} {n}" for k, n in bad.items()))
        if cfg.workload == "chat" and out["connected"] > 1 and out["deliveries"] == out["sent"]:
            # What an echo server does with a room's lines: each goes back to its sender only.
            problems.append("every line came back to its sender alone: "
                            "is the server serving echo rather than chat?")
    if not out["valid"]:
        problems.append("invalid: " + out["invalid_reason"])
    if not problems:
        return None, 0
    return "; ".join(problems), 130 if out["interrupted"] else 1
