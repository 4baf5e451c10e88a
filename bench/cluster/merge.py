"""Many generator hosts' `muxbench load` results as one, without losing anything.

Counts add up.  Latency percentiles are never averaged: each host's
HdrHistogram (its "hdr", itself the lossless sum of its worker processes') is
decoded and added, and the merged figures are read from the sum -- to the
histogram's precision, three significant digits, where a single host's own
figures are exact percentiles of its raw samples.  The merged object has the
keys of one host's, so the report and the gate read a cluster's trial as a
local one; each host's own object is kept beside it under the trial's `hosts`.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

from loadgen.record import empty_summary, hdr_merge

SUMMED = ("clients", "connected", "sent", "received", "lost", "corrupted", "duplicated",
          "reordered", "errors", "late_sends", "deliveries", "expected_deliveries",
          "connections_per_s", "active", "idle", "client_cpu_s", "procs", "rate")
# The figures a host's entry keeps (its histograms too, so a merge can be checked).
HOST_KEYS = ("clients", "connected", "sent", "received", "errors", "errors_by_kind", "lost",
             "corrupted", "duplicated", "reordered", "throughput_msgs_s", "latency_us",
             "client_cpu_s", "client_cpu_util", "valid", "invalid_reason", "invalid_kinds",
             "window", "hdr", "rate", "procs")


def summary_from_hdr(encoded: str | None) -> dict:
    """p50/p90/p99/p99.9/max/mean (µs) and the count, read from an encoded histogram (ns)."""
    out = empty_summary()
    out["count"] = 0
    if not encoded:
        return out
    hist = HdrHistogram.decode(encoded)
    count = hist.get_total_count()
    out["count"] = count
    if count:
        for key, pct in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
            out[key] = hist.get_value_at_percentile(pct) / 1e3
        out["max"] = hist.get_max_value() / 1e3
        out["mean"] = hist.get_mean_value() / 1e3
    return out


def _sum(loads: list[dict], key: str) -> float | int | None:
    values = [load.get(key) for load in loads]
    if all(v is None for v in values):
        return None
    return sum(v or 0 for v in values)


def merge_loads(loads: list[dict], names: list[str], duration_s: float) -> dict:
    """One load object for the hosts' `loads` (named `names`), over a common
    window of `duration_s` seconds."""
    first = loads[0]
    merged = dict(first)
    merged.pop("hdr_workers", None)
    merged.pop("self_check", None)
    for key in SUMMED:
        merged[key] = _sum(loads, key)
    kinds: dict[str, int] = {}
    for load in loads:
        for kind, n in (load.get("errors_by_kind") or {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    merged["errors_by_kind"] = kinds
    merged["duration_s"] = duration_s
    merged["throughput_msgs_s"] = merged["received"] / duration_s if duration_s else 0.0
    hdr = {kind: hdr_merge((load.get("hdr") or {}).get(kind) for load in loads)
           for kind in ("latency", "service_time")}
    merged["hdr"] = hdr
    if first.get("workload") != "idle":
        merged["latency_us"] = summary_from_hdr(hdr["latency"])
    if first.get("service_time_us") is not None:
        merged["service_time_us"] = summary_from_hdr(hdr["service_time"])
    # A connect latency has no histogram to add: the hosts keep theirs.
    merged["connect_latency_us"] = None if len(loads) > 1 else first.get("connect_latency_us")
    lags = [load.get("max_send_lag_us") for load in loads if load.get("max_send_lag_us")]
    merged["max_send_lag_us"] = max(lags) if lags else first.get("max_send_lag_us")
    # The busiest generator is the one that limits the load all of them offer.
    merged["client_cpu_util"] = max(load.get("client_cpu_util") or 0.0 for load in loads)
    kinds_seen: list[str] = []
    reasons = []
    for name, load in zip(names, loads, strict=True):
        for kind in load.get("invalid_kinds") or []:
            if kind not in kinds_seen:
                kinds_seen.append(kind)
        if load.get("invalid_reason"):
            reasons.append(f"{name}: {load['invalid_reason']}")
    merged["valid"] = all(load.get("valid") for load in loads)
    merged["invalid_kinds"] = kinds_seen
    merged["invalid_reason"] = "; ".join(reasons) or None
    merged["interrupted"] = any(load.get("interrupted") for load in loads)
    messages = [f"{name}: {load['message']}" for name, load in zip(names, loads, strict=True)
                if load.get("message")]
    merged["message"] = "; ".join(messages) or None
    merged["exit_status"] = max(load.get("exit_status") or 0 for load in loads)
    return merged


def host_entry(name: str, load: dict | None) -> dict:
    """What a trial keeps of one generator host's own result."""
    if load is None:
        return {"host": name, "role": "generator", "load": None}
    return {"host": name, "role": "generator", "load": {k: load.get(k) for k in HOST_KEYS}}
