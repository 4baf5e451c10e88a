"""The "Hosts" table of a run on a cluster: what each host did over the run's trials.

A local run has no hosts and no such table.  For a cluster run, one row per
host: its role and address, the network the trials crossed, how many trials it
took part in, and -- for a generator -- the messages its clients got back (and
their share of all), the median of its own throughput and of its CPU use; for
the server, the median of its CPU use.  The clock offset is the largest one
measured for the host, with the error bound of that reading: a figure, never a
correction applied behind the reader's back.
"""

from __future__ import annotations

import statistics

from bench.report.tables import Table


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def hosts_table(results: dict) -> Table | None:
    """None when no trial of the run has hosts (a run on one machine)."""
    rows: dict[str, dict] = {}
    networks: set[str] = set()
    for trial in results["trials"]:
        if trial.get("network"):
            networks.add(trial["network"])
        offsets = trial.get("clock_offsets") or {}
        for host in trial.get("hosts") or []:
            row = rows.setdefault(host["host"], {"role": host.get("role"),
                                                 "address": host.get("address"), "trials": 0,
                                                 "received": 0, "rates": [], "cpu": [],
                                                 "offset": None})
            row["trials"] += 1
            load, server = host.get("load") or {}, host.get("server") or {}
            row["received"] += load.get("received") or 0
            if load.get("throughput_msgs_s") is not None:
                row["rates"].append(load["throughput_msgs_s"])
            util = load.get("client_cpu_util") if row["role"] == "generator" else \
                server.get("cpu_util")
            if util is not None:
                row["cpu"].append(util)
            offset = offsets.get(host["host"])
            if offset and (row["offset"] is None
                           or abs(offset["offset_ns"]) > abs(row["offset"]["offset_ns"])):
                row["offset"] = offset
    if not rows:
        return None
    total = sum(row["received"] for row in rows.values()) or None
    table = Table(title="Hosts", columns=["host", "role", "address", "trials",
                                          "messages received", "median msg/s",
                                          "median CPU", "clock offset"])
    table.caption = (f"Network crossed: {', '.join(sorted(networks)) or 'unknown'}. A "
                     "generator's CPU is the busy share of the CPUs its load generator had; "
                     "the server's is its process tree's, in cores. Every other table reads "
                     "the merged figures: the generators' counts and histograms added.")
    for name, row in rows.items():
        share = f" ({row['received'] / total:.0%})" if total and row["role"] == "generator" \
            else ""
        offset = row["offset"]
        table.add(name, row["role"] or "-", row["address"] or "-", str(row["trials"]),
                  f"{row['received']:,}{share}" if row["role"] == "generator" else "-",
                  _fmt(_median(row["rates"]), "{:,.0f}"), _fmt(_median(row["cpu"]), "{:.2f}"),
                  "-" if offset is None else
                  f"{offset['offset_ns'] / 1e3:+.0f} µs ± {offset['error_ns'] / 1e3:.0f} µs")
    return table
