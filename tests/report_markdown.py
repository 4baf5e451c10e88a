"""Reading REPORT.md back: its Markdown tables, numbers with units, and the medians the
fixture says each cell must hold (computed here, independently of bench/)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "data" / "results-small.json"
# What each scenario table shows in a cell, stated here independently of bench/report/measures.py.
CELL_PATHS = {
    "cpu_vs_clients": ["server.cpu_util", "derived.cpu_per_msg_us"],
    "idle": ["server.cpu_util", "server.pss_peak_bytes"],
    "echo_clients": ["load.throughput_msgs_s", "load.latency_us.p99"],
    "echo_size": ["load.throughput_msgs_s", "derived.cpu_per_msg_us"],
    "open_loop": ["load.latency_us.p99", "load.service_time_us.p99", "load.throughput_msgs_s"],
    "chat_fanout": ["load.latency_us.p99", "server.cpu_util"],
    "sparse": ["derived.cpu_per_msg_us", "load.latency_us.p99"],
    "churn": ["load.connections_per_s", "load.latency_us.p99"],
    "polling_interval": ["server.cpu_util", "load.latency_us.p50"],
}
# Unit suffix -> factor back to the stored unit (µs, fraction of a core, bytes, per second).
UNITS = {"µs": 1.0, "ms": 1e3, "s": 1e6, "%": 0.01, "MiB": 2.0**20, "KiB": 2.0**10, "B": 1.0,
         "msgs/s": 1.0, "conn/s": 1.0}
VALUE = re.compile(r"^(-?[\d,]+(?:\.\d+)?) (µs|ms|s|%|MiB|KiB|B|msgs/s|conn/s)(?=\s|$)")


def fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def dotted(trial: dict, path: str):
    value = trial
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def expected_median(results: dict, scenario: str, model: str, x, path: str) -> float | None:
    x_key = results["scenarios"][scenario]["x"]
    values = [dotted(t, path) for t in results["trials"]
              if t["scenario"] == scenario and t["model"] == model and t["status"] == "ok"
              and t["point"][x_key] == x]
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def parse_value(text: str) -> float:
    match = VALUE.match(text.strip())
    assert match, f"no number with a unit in {text!r}"
    return float(match.group(1).replace(",", "")) * UNITS[match.group(2)]


def parse_tables(markdown: str) -> dict[str, tuple[list[str], list[list[str]]]]:
    """{heading: (columns, rows)} for every Markdown table under a ### or ## heading."""
    tables, heading, lines = {}, None, markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and lines[i + 1].startswith("|---"):
            columns = [c.strip() for c in line.strip("|").split(" | ")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append([c.strip() for c in row.strip().strip("|").split(" | ")])
            tables[heading] = (columns, rows)
    return tables


def close(parsed: float, expected: float) -> bool:
    # Cells carry three significant figures.
    return parsed == pytest.approx(expected, rel=6e-3)
