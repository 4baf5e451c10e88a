"""The catalogue of what a trial is measured by: each metric once, for the report and the gate.

A metric is a dotted path into a stored trial (bench/results.py `metric()`),
a label and unit to show it with, and which way is better.  The report draws
and ranks by them; the gate (bench/gate/judge.py) judges a few of them, and
for those the catalogue also says how: whether a value is read against the
reference model of the same run, and below which floor it is noise.  Last,
which metrics each scenario's table shows, in report order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Metric:
    """One figure of a trial, and how to read it.

    `bound` is what the figure of a generator-bound trial is (the load
    generator ran out of CPU before the server did; bench/results.py
    is_generator_bound): "≥" a lower bound, "≤" an upper bound, "" neither, and
    then it is not shown.  Throughput and connection rate are lower bounds: the
    server did serve that many a second and was never pushed to its limit.
    CPU per message is an upper bound: its numerator is every CPU-second of the
    server's tree in the window, including what the server spent waiting on a
    generator that could not keep it busy (a wake-up and a readiness call for
    one message where a busier loop handles several, a polling loop's spin),
    and its denominator counts exactly the messages it served.  Pushed harder at
    the same point, the server spreads those costs over more messages, so its
    cost per message at its own limit is at most this.  Latency has no such
    direction: it holds the generator's own queueing.
    """

    path: str  # dotted path into a trial
    label: str
    unit: str  # "us", "core", "bytes", "msgs", "conns", "count"
    lower_is_better: bool = True
    short: str = ""  # the gate's column heading
    # Times scale with the machine, so the gate reads them against a reference model
    # measured in the same run; memory per connection does not, and is compared raw.
    normalised: bool = True
    # The gate counts a value below the floor as the floor: under it the metric is noise.
    floor: float = 0.0
    bound: str = ""  # "≥", "≤" or "": see the class docstring

    @property
    def key(self) -> str:
        """The metric's name in the gate's verdicts: the last part of its path."""
        return self.path.rpartition(".")[2]


CPU = Metric("server.cpu_util", "server CPU", "core")
CPU_PER_MSG = Metric("derived.cpu_per_msg_us", "CPU per message", "us", short="CPU/msg",
                     bound="≤")
CTX_PER_MSG = Metric("derived.ctx_per_msg", "context switches per message", "count")
SYSCALLS_PER_MSG = Metric("derived.syscalls_per_msg", "system calls per message", "count",
                          short="syscalls/msg", bound="≤")
PSS = Metric("server.pss_peak_bytes", "PSS (peak)", "bytes")
# PSS per connection is (the tree's anonymous PSS during the window - at start) /
# connections.  An event loop's true cost is a few hundred bytes, and whether the
# allocator's pools already had room for them can double it; an 8 KiB floor keeps
# such jumps out of the gate and still sees a thread's stack and buffer page (~14 KiB).
PSS_FLOOR = 8192.0
PSS_PER_CONN = Metric("derived.pss_per_conn_bytes", "PSS per connection", "bytes",
                      short="PSS/conn", normalised=False, floor=PSS_FLOOR)
THROUGHPUT = Metric("load.throughput_msgs_s", "throughput", "msgs", lower_is_better=False,
                    bound="≥")
P50 = Metric("load.latency_us.p50", "p50 latency", "us")
P99 = Metric("load.latency_us.p99", "p99 latency", "us")
P999 = Metric("load.latency_us.p999", "p99.9 latency", "us")
SERVICE_P99 = Metric("load.service_time_us.p99", "p99 service time", "us")
CONN_RATE = Metric("load.connections_per_s", "connections", "conns", lower_is_better=False,
                   bound="≥")
OFFERED = Metric("load.rate", "offered load", "msgs", lower_is_better=False)

# The same figures as the harness copies them into every trial's "derived" record,
# where the gate reads them.
DERIVED_P99 = Metric("derived.p99_us", "p99 latency", "us", short="p99")
DERIVED_THROUGHPUT = Metric("derived.throughput_msgs_s", "throughput", "msgs",
                            lower_is_better=False, short="throughput")

# What p99 means in an open-loop echo and in a chat room.
RESPONSE_P99 = replace(P99, label="p99 response time")
DELIVERY_P99 = replace(P99, label="p99 delivery latency")
# In chat a "message" the load generator counts is one line received by one client.
CPU_PER_DELIVERY = replace(CPU_PER_MSG, label="CPU per delivery")
CTX_PER_DELIVERY = replace(CTX_PER_MSG, label="context switches per delivery")

# The scenarios in report order, each with the metrics its table shows (the first
# is the one its sentences rank models by).
SCENARIO_METRICS: dict[str, tuple[Metric, ...]] = {
    "cpu_vs_clients": (CPU, CPU_PER_MSG),
    "idle": (CPU, PSS),
    "echo_clients": (THROUGHPUT, P99),
    "syscalls": (SYSCALLS_PER_MSG, CPU_PER_MSG),
    "echo_size": (THROUGHPUT, CPU_PER_MSG),
    "open_loop": (RESPONSE_P99, SERVICE_P99, THROUGHPUT),
    "chat_fanout": (DELIVERY_P99, CPU),
    "sparse": (CPU_PER_MSG, P99),
    "churn": (CONN_RATE, P99),
    "polling_interval": (CPU, P50),
    "c100k_idle": (PSS_PER_CONN, CPU),
    "c100k_sparse": (CPU_PER_MSG, P99),
}
DEFAULT_METRICS = (CPU, P99)
# Scenarios the report shows only in runs that have them (they run in the full suite, or
# when named), rather than as "not measured" in every other report.
WHEN_RUN = ("c100k_idle", "c100k_sparse")
