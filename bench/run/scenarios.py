"""The scenarios and suites, as data: what each comparison drives and at which points.

A scenario names a workload, a protocol, the point parameter that is its x
axis, and its points per suite.  A point is a dict of parameters stored as is
in every trial (`trial["point"]`); `load_args()` and `server_args()` turn it
into command-line options.  A point may be limited to some models, for the
points that only mean something for them (select past fd 1024) or would cost
minutes for little (a thousand forked children); a command server (the C
reference, or one given with `muxbench bench --server`) runs the points open
to every model.

Parameters a point may hold:
  clients          connections (chat: the room size; churn: concurrent connectors)
  idle, active     sparse: idle connections beside `active` ping-ponging ones
  size             bytes per message
  rate             total offered messages/s (open loop)
  rate_per_client  messages/s per connection (open loop; total = clients * this)
  interval_ms      polling: the server's sleep between sweeps
  workers          the multi-worker models' --workers (else one per server CPU)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from servers.models import MODELS
from servers.reference import C_SERVER

if TYPE_CHECKING:
    from bench.run.launch import CommandServer

SUITES = ("quick", "default", "full")


@dataclass(frozen=True)
class Suite:
    name: str
    duration: float  # measurement window, seconds
    warmup: float
    repeats: int
    sample_interval: float  # seconds between memory samples
    budget_s: int  # what the suite is designed to fit in on a 2-core machine


SUITE_SETTINGS = {
    "quick": Suite("quick", duration=0.4, warmup=0.15, repeats=1, sample_interval=0.2,
                   budget_s=120),
    "default": Suite("default", duration=0.5, warmup=0.2, repeats=2, sample_interval=0.2,
                     budget_s=600),
    "full": Suite("full", duration=2.0, warmup=0.5, repeats=5, sample_interval=0.25,
                  budget_s=0),
}


@dataclass(frozen=True)
class Point:
    params: dict
    models: tuple[str, ...] | None = None  # None: every model of the scenario


def pts(key: str, values: list, *, only: tuple[str, ...] | None = None, **fixed) -> list[Point]:
    """Points varying `key` over `values`, with `fixed` parameters beside it."""
    return [Point({**fixed, key: v}, only) for v in values]


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    workload: str  # `muxbench load --workload`
    protocol: str
    x: str
    x_label: str
    log_x: bool
    suites: dict[str, list[Point]]
    models: tuple[str, ...] | None = None  # None: every available model
    reference: tuple[str, ...] = ()  # the suites in which the C server runs too
    why: str = ""
    headline: tuple[str, str, str] = ("server.cpu_util", "CPU core", "{:.2f}")  # path, label, fmt
    # Count the server's system calls in the window (bench/sample/syscalls.py).  Only
    # where asked: the tracepoint costs a little on every call, so the other
    # scenarios' CPU figures stay untouched by it.
    count_syscalls: bool = False
    # The suites that run it when no --scenarios is given (named, it runs in any).
    runs_in: tuple[str, ...] = SUITES
    repeats: int | None = None  # at most this many, whatever the suite's
    duration: float | None = None  # its window and warm-up base, instead of the suite's
    warmup: float | None = None
    # Seconds of warm-up per thousand connections: the server accepts them in it.
    settle_per_1000: float = 1.0
    # Scenarios of one family share their models' limits (bench/run/capacity.py):
    # a model that could not hold N connections in one is not tried past N in the next.
    family: str = ""
    # The slowest accept rate its trials wait for before they time out.
    accepts_per_s: float = 200.0

    def metadata(self) -> dict:
        return {"title": self.title, "x": self.x, "x_label": self.x_label,
                "workload": self.workload, "protocol": self.protocol, "log_x": self.log_x,
                "description": self.why, "headline": self.headline[0],
                "count_syscalls": self.count_syscalls, "family": self.family}


# Within 2 minutes the C server fits in echo_clients only, within 10 in three scenarios.
BIG = ("default", "full")
SCANNERS = ("select", "poll", "epoll")  # the fd-count comparison
# The models that serve from one process: a thousand forked children cost minutes.
ONE_PROCESS = tuple(name for name, model in MODELS.items() if model.approach != "processes")
# C100K: up to a hundred thousand connections.  One process holds at most its
# RLIMIT_NOFILE of them (20,000 here), so the multi-worker models get a worker
# for every PER_WORKER, with room left for an uneven spread.
C100K = [1000, 10000, 20000, 30000, 100000]
PER_WORKER = 16000
# A model that accepts fewer connections a second than this has stopped (a time-out);
# waiting minutes for it at 10,000 would say no more and spend the suite's budget.
C100K_ACCEPTS = 1000.0


def c100k_pts(key: str, counts: list[int] = C100K, **fixed) -> list[Point]:
    """`key` over `counts`, each with the workers the multi-worker models need for it."""
    return [Point({**fixed, key: n, "workers": max(1, math.ceil(n / PER_WORKER))})
            for n in counts]

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(
        "idle", "CPU and memory with idle clients", "idle", "echo", "clients",
        "idle clients", True,
        {"quick": pts("clients", [100]) + pts("clients", [1100], only=SCANNERS),
         "default": pts("clients", [100]) + pts("clients", [1100], only=ONE_PROCESS),
         "full": pts("clients", [10, 100, 1100, 3000])
         + pts("clients", [10000], only=ONE_PROCESS)},
        why="polling's cost with nothing to do, select's fd ceiling, memory per connection"),
    Scenario(
        "cpu_vs_clients", "Server CPU vs clients at a fixed per-client rate", "echo", "echo",
        "clients", "clients (5 msg/s each, open loop)", True,
        {"quick": pts("clients", [100], rate_per_client=5, size=64),
         "default": pts("clients", [10, 100, 1000], rate_per_client=5, size=64),
         "full": pts("clients", [10, 100, 1000, 3000], rate_per_client=5, size=64)},
        reference=BIG, why="the headline curve: what each model costs as clients grow"),
    Scenario(
        "echo_clients", "Echo throughput and latency vs clients (closed loop)", "echo", "echo",
        "clients", "clients (closed loop, 64 B)", True,
        {"quick": pts("clients", [10], size=64),
         "default": pts("clients", [1, 100], size=64),
         "full": pts("clients", [1, 10, 100, 1000], size=64)},
        reference=SUITES, why="how fast each model turns requests around when pushed",
        headline=("derived.cpu_per_msg_us", "us/msg", "{:.1f}")),
    Scenario(
        "syscalls", "System calls per message", "echo", "echo",
        "clients", "clients (closed loop, 64 B)", True,
        {"quick": pts("clients", [50], size=64),
         "default": pts("clients", [1, 50], size=64),
         "full": pts("clients", [1, 10, 50, 1000], size=64)},
        reference=SUITES, count_syscalls=True,
        why="what readiness costs in kernel crossings against completion's batched submissions",
        headline=("derived.syscalls_per_msg", "syscalls/msg", "{:.2f}")),
    Scenario(
        "echo_size", "Echo throughput and latency vs message size", "echo", "echo",
        "size", "message size (bytes)", True,
        {"quick": pts("size", [4096], clients=10),
         "default": pts("size", [64, 65536], clients=10),
         "full": pts("size", [64, 256, 1024, 4096, 16384, 65536], clients=10)},
        reference=BIG, why="per-message overhead against per-byte copying",
        headline=("derived.cpu_per_msg_us", "us/msg", "{:.1f}")),
    Scenario(
        "open_loop", "Latency vs offered load (open loop)", "echo", "echo",
        "rate", "offered load (msgs/s, 50 clients)", True,
        {"quick": pts("rate", [2000], clients=50, size=64),
         "default": pts("rate", [1000, 8000], clients=50, size=64),
         "full": pts("rate", [1000, 2000, 4000, 8000, 16000, 32000], clients=50, size=64)},
        reference=("full",), why="response time from the intended send, up to each model's knee",
        headline=("derived.p99_us", "p99 us", "{:.0f}")),
    Scenario(
        "chat_fanout", "Chat fan-out vs room size", "chat", "chat",
        "clients", "room size (clients)", True,
        {"quick": pts("clients", [10], rate=100, size=64),
         "default": pts("clients", [2, 20], rate=100, size=64),
         "full": pts("clients", [2, 10, 50, 200], rate=100, size=64)},
        why="deliveries/s and per-receiver latency as every line goes to everyone",
        headline=("derived.cpu_per_msg_us", "us/delivery", "{:.1f}")),
    Scenario(
        "sparse", "CPU per message vs idle connections", "sparse", "echo",
        "idle", "idle connections (10 active)", True,
        {"quick": pts("idle", [10], active=10, size=64)
         + pts("idle", [1000], only=SCANNERS, active=10, size=64),
         "default": pts("idle", [10], active=10, size=64)
         + pts("idle", [1000], only=ONE_PROCESS, active=10, size=64),
         "full": pts("idle", [10, 100, 1000], active=10, size=64)
         + pts("idle", [10000], only=ONE_PROCESS, active=10, size=64)},
        why="O(watched) against O(ready): what a wait costs as idle fds pile up",
        headline=("derived.cpu_per_msg_us", "us/msg", "{:.1f}")),
    Scenario(
        "churn", "Connection churn", "churn", "echo",
        "clients", "concurrent connectors", True,
        {"quick": pts("clients", [4], size=64),
         "default": pts("clients", [4], size=64),
         "full": pts("clients", [1, 8, 32], size=64)},
        why="connections/s: fork vs thread vs an event loop",
        headline=("load.connections_per_s", "conn/s", "{:.0f}")),
    Scenario(
        "c100k_idle", "C100K: idle connections up to each model's limit", "idle", "echo",
        "clients", "idle connections", True, dict.fromkeys(SUITES, c100k_pts("clients")),
        runs_in=("full",), repeats=1, duration=0.5, warmup=0.3, settle_per_1000=0.2,
        family="c100k", accepts_per_s=C100K_ACCEPTS,
        why="how many connections each model holds on this box, what stops it, what one costs",
        headline=("derived.pss_per_conn_bytes", "PSS/conn", "{:.0f}")),
    Scenario(
        "c100k_sparse", "C100K: 10 active among N idle connections", "sparse", "echo",
        "idle", "idle connections (10 active)", True,
        dict.fromkeys(SUITES, c100k_pts("idle", active=10, size=64)),
        runs_in=("full",), repeats=1, duration=1.0, warmup=0.3, settle_per_1000=0.2,
        family="c100k", accepts_per_s=C100K_ACCEPTS,
        why="CPU per active message as idle connections grow to the limit: O(watched) or "
            "O(ready)",
        headline=("derived.cpu_per_msg_us", "us/msg", "{:.1f}")),
    Scenario(
        "polling_interval", "Polling interval: CPU vs latency", "echo", "echo",
        "interval_ms", "polling interval (ms)", False,
        {"quick": pts("interval_ms", [0, 10], clients=10, rate=500, size=64),
         "default": pts("interval_ms", [0, 1, 10, 100], clients=10, rate=500, size=64),
         "full": pts("interval_ms", [0, 0.1, 1, 10, 100], clients=10, rate=500, size=64)},
        models=("polling",), why="the seed's 'delay grows with the polling period'",
        headline=("derived.p99_us", "p99 us", "{:.0f}")),
)}


def scenario_models(scenario: Scenario, suite: str, models: list[str],
                    servers: Mapping[str, CommandServer] | None = None) -> list[str]:
    """The models a scenario runs: the built-in `models` it is for, in catalogue
    order, then the command `servers` that speak its protocol, in theirs.

    A command server runs every scenario open to all models (none of one model's
    parameters, like the polling interval) -- the C reference only in the suites
    its `reference` names, where its figures are worth their time.
    """
    names = [m for m in models if scenario.models is None or m in scenario.models]
    if scenario.models is None:
        names += [name for name, server in (servers or {}).items()
                  if server.protocol == scenario.protocol
                  and (name != C_SERVER or suite in scenario.reference)]
    return names


def point_models(point: Point, models: list[str]) -> list[str]:
    return [m for m in models if point.models is None or m in point.models]


def load_args(scenario: Scenario, params: dict) -> list[str]:
    """`muxbench load` options for one point (host, port, timing and --json added later)."""
    args = ["--workload", scenario.workload]
    if scenario.workload == "idle":
        args += ["--drain", "0"]  # nothing is ever outstanding; do not wait for it
    if "idle" in params:
        clients = params["idle"] + params.get("active", 0)
        args += ["--clients", str(clients), "--active", str(params.get("active", 0))]
    else:
        args += ["--clients", str(params["clients"])]
    if "size" in params:
        args += ["--size", str(params["size"])]
    rate = params.get("rate")
    if "rate_per_client" in params:
        rate = params["rate_per_client"] * params["clients"]
    if rate is not None:
        args += ["--rate", f"{rate:g}"]
    return args


def server_args(params: dict) -> list[str]:
    if params.get("interval_ms"):
        return ["--interval", f"{params['interval_ms'] / 1000:g}"]
    return []


def connections(params: dict) -> int:
    return params.get("clients", 0) + params.get("idle", 0) + params.get("active", 0)


@dataclass(frozen=True)
class PlannedTrial:
    scenario: Scenario
    model: str
    point: dict
    repeat: int


def plan(suite: str, scenarios: list[Scenario], models: list[str], repeats: int,
         servers: Mapping[str, CommandServer] | None = None) -> list[PlannedTrial]:
    """Every trial of a suite, in run order (`models` and `servers` as in scenario_models).

    Models take turns at each point, and the order rotates with the point and
    the repeat, so no model always runs first (on a cold cache) or right after
    the one that heats the machine most.
    """
    out = []
    for repeat in range(repeats):
        for scenario in scenarios:
            if scenario.repeats is not None and repeat >= scenario.repeats:
                continue
            names = scenario_models(scenario, suite, models, servers)
            for index, point in enumerate(scenario.suites[suite]):
                turn = point_models(point, names)
                if not turn:
                    continue
                shift = (repeat + index) % len(turn)
                out += [PlannedTrial(scenario, m, dict(point.params), repeat)
                        for m in turn[shift:] + turn[:shift]]
    return out
