"""What a trial's raw outcome means: its status and reason, and the per-message figures.

Statuses (a trial's "status" in results.json, bench/results.py): "ok" --
measured, and the numbers mean what they say; "invalid" -- the run completed
but the load generator itself was the bottleneck, so the server was not the
limit; "failed" -- the server died or never started, the generator produced
nothing, or a message was lost, corrupted, duplicated or reordered. A server
turning idle clients away at its own limit (select past fd 1023) is the
measurement, not a failure: "ok" with the ceiling in the reason.

An invalid trial whose one fault is the generator's saturated CPU -- it kept
its send schedule, lost no worker, and nothing that makes a trial failed
happened -- is also "generator_bound": the server did at least its throughput,
so the report shows it as a bound, while medians and the gate, which read
"ok" trials only, still leave it out.
"""

from __future__ import annotations

INTEGRITY = ("lost", "corrupted", "duplicated", "reordered")
# The generator's own verdict (its invalid_kinds) of a run that was only short of CPU.
SATURATED_ONLY = ["saturated"]


def classify(workload: str, load: dict | None, outcome: dict, server_status: int | None,
             server_log: str) -> tuple[str, str | None]:
    if server_status is not None:
        return "failed", (f"server exited with status {server_status} during the trial"
                          + (f": {server_log}" if server_log else ""))
    if outcome["timed_out"]:
        return "failed", f"load generator did not finish within {outcome['timeout_s']:.0f} s"
    if load is None:
        return "failed", (f"load generator exited with status {outcome['exit_status']} "
                          f"and no results: {outcome['stderr'] or 'no message'}")
    bad = [f"{load[k]} {k}" for k in INTEGRITY if load.get(k)]
    if bad:
        return "failed", "integrity: " + ", ".join(bad)
    if not load.get("connected") and workload != "churn":
        return "failed", f"no connection established ({_kinds(load)})"
    if outcome["exit_status"] == 2:
        return "failed", f"load generator could not reach the server ({_kinds(load)})"
    if load.get("errors"):
        turned_away = (f"{load['errors']} of {load['clients']} connections turned away "
                       f"({_kinds(load)})")
        if workload == "idle":
            return "ok", f"ceiling: {turned_away}"
        return "failed", f"{load['errors']} errors ({_kinds(load)})"
    if load.get("valid") is False:
        return "invalid", load.get("invalid_reason") or "load generator marked the run invalid"
    return "ok", None


def generator_bound(status: str, load: dict | None) -> bool:
    """Whether a trial classify() judged `status` is a bound rather than a blank.

    Only an invalid one qualifies (classify has already made every trial with
    errors, integrity faults, a dead server or generator "failed"), and only
    when the generator's sole complaint was its CPU: one that fell behind its
    open-loop schedule offered another load than the point names, and one that
    lost a worker counted only part of it."""
    return status == "invalid" and load is not None and load.get("invalid_kinds") == SATURATED_ONLY


def _kinds(load: dict) -> str:
    kinds = load.get("errors_by_kind") or {}
    return ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "no error kinds given"


def figures(server: dict | None, load: dict | None) -> dict:
    """A trial's "derived" record: per-message and per-connection figures, and the
    ones the gate reads; None where they do not apply."""
    out = {"cpu_per_msg_us": None, "ctx_per_msg": None, "pss_per_conn_bytes": None,
           "throughput_msgs_s": None, "p99_us": None, "syscalls_per_msg": None}
    if load:
        out["throughput_msgs_s"] = load.get("throughput_msgs_s")
        out["p99_us"] = (load.get("latency_us") or {}).get("p99")
    if not (server and load):
        return out
    messages = load.get("received") or 0
    if messages > 0:
        out["cpu_per_msg_us"] = server["cpu_s"] / messages * 1e6
        out["ctx_per_msg"] = (server["ctx_voluntary"] + server["ctx_involuntary"]) / messages
        if server.get("syscalls") is not None:
            out["syscalls_per_msg"] = server["syscalls"] / messages
    # Anonymous PSS only: see bench/sample/sampler.py for why file pages are left out.
    baseline, mean = server.get("pss_anon_baseline_bytes"), server.get("pss_anon_mean_bytes")
    connected = load.get("connected") or 0
    if baseline is not None and mean is not None and connected > 0:
        out["pss_per_conn_bytes"] = (mean - baseline) / connected
    return out
