"""The readable summary `muxbench load` prints without --json."""

from __future__ import annotations

_LATENCY_LABEL = {
    ("echo", "closed"): "round trip",
    ("echo", "open"): "response time (from the intended send)",
    ("sparse", "closed"): "round trip (active connections)",
    ("chat", "closed"): "delivery (send to each receiver)",
    ("chat", "open"): "delivery (send to each receiver)",
    ("churn", "closed"): "connect + one echo",
}


def _stats(summary: dict | None) -> str:
    if not summary or not summary.get("count"):
        return "no samples"
    keys = ("p50", "p90", "p99", "p999", "max", "mean")
    names = ("p50", "p90", "p99", "p99.9", "max", "mean")
    cells = "  ".join(f"{name} {summary[key]:,.1f}" for key, name in zip(keys, names, strict=True))
    return f"{cells}  (n={summary['count']:,})"


def render(out: dict) -> str:
    workload, mode = out["workload"], out["mode"]
    head = f"{workload} {mode} loop" if workload in ("echo", "chat") else workload
    conns = (f"{out['clients']} connect/echo/close loops" if workload == "churn"
             else f"{out['connected']}/{out['clients']} connections")
    lines = [
        f"{head}: {conns}, {out['size']} B"
        + (f", {out['rate']:g} msg/s {out['arrival']}" if out["rate"] is not None else "")
        + f", {out['duration_s']:.4g} s window"
        + (" (cut short: interrupted)" if out["interrupted"] else "")
        + f" after {out['warmup_s']:g} s warm-up,"
          f" {out['procs']} worker process(es)",
    ]
    if workload != "idle":
        lines.append(f"messages: sent {out['sent']:,}  received {out['received']:,}"
                     f"  throughput {out['throughput_msgs_s']:,.0f} msg/s")
        label = _LATENCY_LABEL.get((workload, mode), "latency")
        lines.append(f"latency µs, {label}: {_stats(out['latency_us'])}")
    if out["service_time_us"] is not None:
        lines.append(f"latency µs, service time (from the actual send): "
                     f"{_stats(out['service_time_us'])}")
        lines.append(f"late sends (> 1 ms behind schedule): {out['late_sends']:,}"
                     f"  max lag {out['max_send_lag_us']:,.0f} µs")
    if out["deliveries"] is not None:
        lines.append(f"chat deliveries: {out['deliveries']:,} of {out['expected_deliveries']:,}"
                     " expected")
    if out["connections_per_s"] is not None:
        lines.append(f"churn: {out['connections_per_s']:,.0f} connections/s; connect µs: "
                     f"{_stats(out['connect_latency_us'])}")
    connect, memory = out.get("connect"), out.get("generator_memory")
    if connect:
        sources = f", from {len(connect['sources'])} source addresses" if connect["sources"] else ""
        lines.append(f"connect: {connect['held']:,} of {connect['wanted']:,} held in "
                     f"{connect['seconds']:.2f} s{sources}, {connect['retries']:,} retries, "
                     f"{connect['failed']:,} failed; descriptor limit {connect['nofile_limit']:,}"
                     " per worker")
    if memory and memory["uss_per_connection_bytes"] is not None:
        lines.append(f"generator memory: PSS {memory['pss_bytes'] / 1e6:,.1f} MB, "
                     f"{memory['uss_per_connection_bytes']:,.0f} B USS per connection")
    if out["active"] is not None:
        lines.append(f"connections: {out['active']} active, {out['idle']} idle")
    lines.append("integrity: " + ", ".join(
        f"{key} {out[key]:,}" for key in ("lost", "corrupted", "duplicated", "reordered")))
    errors = out["errors_by_kind"]
    lines.append("errors: " + (", ".join(f"{k} {n}" for k, n in sorted(errors.items()))
                               if errors else "none"))
    if out["window"]["start_unix"] is None:
        # Nothing connected, so there was no window: no self-check to pass or fail.
        lines.append("generator: not measured, the run never started")
    else:
        verdict = "valid" if out["valid"] else f"INVALID: {out['invalid_reason']}"
        lines.append(f"generator: {out['client_cpu_s']:.2f} CPU-s in the window, "
                     f"{out['client_cpu_util']:.0%} of {out['self_check']['cpus_usable']} "
                     f"CPU(s); {verdict}")
    return "\n".join(lines)
