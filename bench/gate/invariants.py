"""What must hold in every run, whatever the machine: correctness and the seed's physics.

Absolute times swing 3x between identical runs here, so nothing below gates on
wall-clock speed.  Each check is a ratio or an ordering between models measured
in the same run, with margins wide enough that only a broken model (or a broken
harness) fails it.  Every check takes a results dict (bench/results.py)
and returns a list of one-line violations; an empty list means it holds.  A
point a check needs but cannot find is itself a violation, so a suite that
stopped measuring something cannot pass by omission.

`muxbench check [RUN]` prints the violations of a stored run and exits 1 when
there are any, 2 when the run cannot be read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterable

from bench.results import ResultsError, group_points, load_results, metric, results_file

# The idle point (clients) shared by polling and epoll, and the sparse points
# (idle fds), that the quick suite measures; see /work/notes/INVARIANT-NEEDS.md.
# A sweep that never sleeps blocks at most a few times a second (a page fault, the
# sampler's reads); one that sleeps between sweeps, even 1 ms, blocks ~1000 times.
POLLING_MAX_SLEEPS_PER_S = 10.0
POLLING_OVER_EPOLL = 20.0
MANY_CLIENTS = 1100
SPARSE_FEW, SPARSE_MANY = 10, 1000
SCAN_GROWTH_MIN = 1.5  # select/poll scan every fd per wait: 100x the fds costs far more
EPOLL_GROWTH_MAX = 2.0
INTEGRITY_COUNTERS = ("lost", "corrupted", "duplicated", "reordered")
# How bench/run/outcome.py words an idle trial whose server turned clients away at its
# own limit: "ok", with the reason "ceiling: N of M connections turned away (...)".
CEILING = "ceiling: "

Check = Callable[[dict], list[str]]


def _median_at(results: dict, scenario: str, model: str, path: str,
               statuses: Iterable[str] = ("ok",),
               reduce: Callable[[list[float]], float] = statistics.median) -> dict:
    """{x: median (or reduce) of the metric over the point's repeats} for one model."""
    out = {}
    for (scen, mod, _, x), trials in group_points(results, statuses).items():
        if scen == scenario and mod == model:
            values = [v for v in (metric(t, path) for t in trials) if v is not None]
            if values:
                out[x] = reduce(values)
    return out


def _trials(results: dict, scenario: str, model: str, x: object) -> list[dict]:
    grouped = group_points(results, ("ok", "failed", "invalid"))
    return [t for (scen, mod, _, px), ts in grouped.items()
            if scen == scenario and mod == model and px == x for t in ts]


def _where(trial: dict) -> str:
    return f"{trial['scenario']}/{trial['model']} {trial['point']} repeat {trial['repeat']}"


def check_integrity(results: dict) -> list[str]:
    """No lost, corrupted, duplicated or reordered message in any trial of any model."""
    out = []
    for trial in results["trials"]:
        load = trial.get("load")
        if not load:
            continue
        bad = {k: load.get(k) for k in INTEGRITY_COUNTERS if load.get(k)}
        if bad:
            counts = ", ".join(f"{v} {k}" for k, v in bad.items())
            out.append(f"{_where(trial)}: {counts}")
    return out


def check_cleanup(results: dict) -> list[str]:
    """No process and no fd left behind after any trial (the harness's per-trial record).

    The server must exit on SIGTERM taking its children with it (anything the
    harness had to SIGKILL counts as left behind), and the orchestrator must
    hold no more fds after the trial than before it (fewer is fine: the
    server's own pipes were opened before the count and closed with it).
    """
    out = []
    for trial in results["trials"]:
        record = trial.get("cleanup")
        if not isinstance(record, dict):
            out.append(f"{_where(trial)}: harness recorded no cleanup check")
            continue
        left = {k: record.get(k) for k in ("leftover_procs", "leftover_fds")}
        wrong = {k: v for k, v in left.items() if v is None or v > 0}
        if record.get("left_after_sigterm", 0) != 0 or record.get("graceful", True) is not True:
            wrong.update(graceful=record.get("graceful"),
                         left_after_sigterm=record.get("left_after_sigterm"))
        if wrong:
            out.append(f"{_where(trial)}: not clean after the trial: {wrong}")
    return out


def check_polling_idle_cpu(results: dict) -> list[str]:
    """Polling never sleeps with idle clients, and burns >= 20x epoll's CPU with the same ones.

    How much of a core the sweep gets depends on what else runs on its CPU: it
    takes all it is given, and a busy neighbour halves that.  What does not
    depend on the neighbours is that it never blocks: its voluntary context
    switches stay near zero, where a loop that sleeps between sweeps makes one
    per sleep.  The ratio to epoll uses the medians of the same run.
    """
    polling = _median_at(results, "idle", "polling", "server.cpu_util")
    epoll = _median_at(results, "idle", "epoll", "server.cpu_util")
    sleeps = _median_at(results, "idle", "polling", "server.ctx_voluntary", reduce=max)
    walls = _median_at(results, "idle", "polling", "server.wall_s", reduce=min)
    common = sorted(set(polling) & set(epoll))
    if not common:
        return ["idle: no client count measured for both polling and epoll"]
    out = []
    for n in common:
        if n not in sleeps or not walls.get(n):
            out.append(f"idle clients={n}: polling's voluntary context switches not recorded")
        elif sleeps[n] / walls[n] > POLLING_MAX_SLEEPS_PER_S:
            out.append(f"idle clients={n}: polling slept {sleeps[n]:.0f} times in a "
                       f"{walls[n]:.2f} s window, expected a sweep that never sleeps "
                       f"(<= {POLLING_MAX_SLEEPS_PER_S:g} a second)")
        if polling[n] < POLLING_OVER_EPOLL * epoll[n]:
            out.append(f"idle clients={n}: polling {polling[n]:.3f} core is not "
                       f">= {POLLING_OVER_EPOLL:g}x epoll's {epoll[n]:.4f}")
    return out


def _select_refused(trial: dict) -> bool:
    # The server never held them all, and the trial says the clients were turned
    # away at its ceiling -- not that it failed for another reason (a crash, a
    # generator that never ran), which would hold fewer fds just the same.
    # (fds_peak, not <= 1024: an fd numbered 1024 is open for an instant before
    # select's server closes it.)
    server = trial.get("server") or {}
    fds = server.get("fds_peak")
    at_ceiling = trial["status"] == "ok" and str(trial.get("reason") or "").startswith(CEILING)
    return fds is not None and fds < MANY_CLIENTS and at_ceiling


def _served_all(trial: dict) -> bool:
    load, server = trial.get("load") or {}, trial.get("server") or {}
    return (trial["status"] == "ok" and load.get("connected") == MANY_CLIENTS
            and load.get("errors") == 0 and (server.get("fds_peak") or 0) >= MANY_CLIENTS)


def check_fd_ceiling(results: dict) -> list[str]:
    """select turns away fds >= 1024 while poll and epoll serve 1100 idle clients."""
    out = []
    for model, holds, expected in (("select", _select_refused, "refused fds >= 1024"),
                                   ("poll", _served_all, f"served all {MANY_CLIENTS}"),
                                   ("epoll", _served_all, f"served all {MANY_CLIENTS}")):
        trials = _trials(results, "idle", model, MANY_CLIENTS)
        if not trials:
            out.append(f"idle clients={MANY_CLIENTS}: no {model} trial")
        for trial in trials:
            if not holds(trial):
                load, server = trial.get("load") or {}, trial.get("server") or {}
                out.append(f"{_where(trial)}: expected {model} to have {expected}; status "
                           f"{trial['status']} ({trial.get('reason') or 'no reason'}), "
                           f"connected {load.get('connected')}, errors {load.get('errors')}, "
                           f"server fds_peak {server.get('fds_peak')}")
    return out


def check_sparse_scaling(results: dict) -> list[str]:
    """CPU per message grows with idle fds for select and poll; epoll's stays within 2x.

    Trials marked invalid because the load generator saturated count too: that
    flag is about the offered load, while CPU per message is the server's own
    counter divided by the messages it really served.
    """
    out = []
    for model, grows in (("select", True), ("poll", True), ("epoll", False)):
        cpu = _median_at(results, "sparse", model, "derived.cpu_per_msg_us", ("ok", "invalid"))
        if SPARSE_FEW not in cpu or SPARSE_MANY not in cpu:
            out.append(f"sparse: no {model} CPU/msg at both {SPARSE_FEW} "
                       f"and {SPARSE_MANY} idle fds")
            continue
        growth = cpu[SPARSE_MANY] / cpu[SPARSE_FEW]
        desc = (f"sparse {model}: CPU/msg {cpu[SPARSE_FEW]:.1f} us at {SPARSE_FEW} idle fds, "
                f"{cpu[SPARSE_MANY]:.1f} us at {SPARSE_MANY} (x{growth:.2f})")
        if grows and growth < SCAN_GROWTH_MIN:
            out.append(f"{desc}, expected growth >= x{SCAN_GROWTH_MIN}")
        if not grows and growth > EPOLL_GROWTH_MAX:
            out.append(f"{desc}, expected within x{EPOLL_GROWTH_MAX}")
    return out


def check_memory_order(results: dict) -> list[str]:
    """Memory (PSS) per connection: fork > thread > epoll, at the same idle client count."""
    order = ("fork", "thread", "epoll")
    pss = {m: _median_at(results, "idle", m, "derived.pss_per_conn_bytes") for m in order}
    common = sorted(set.intersection(*(set(v) for v in pss.values())))
    if not common:
        return ["idle: no client count with PSS/conn measured for all of fork, thread, epoll"]
    out = []
    for n in common:
        values = [pss[m][n] for m in order]
        if not values[0] > values[1] > values[2]:
            shown = ", ".join(f"{m} {v / 1024:.1f} KiB" for m, v in zip(order, values, strict=True))
            out.append(f"idle clients={n}: PSS/conn not fork > thread > epoll ({shown})")
    return out


INVARIANTS: dict[str, Check] = {
    "integrity": check_integrity,
    "cleanup": check_cleanup,
    "polling_idle_cpu": check_polling_idle_cpu,
    "fd_ceiling": check_fd_ceiling,
    "sparse_scaling": check_sparse_scaling,
    "memory_order": check_memory_order,
}


def check_all(results: dict) -> dict[str, list[str]]:
    """{invariant name: violations} for every invariant."""
    return {name: check(results) for name, check in INVARIANTS.items()}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Check a stored run against the invariants: message integrity, "
                          "cleanup, and the physics of each I/O model. Exit 1 on a violation, "
                          "2 when the run cannot be read.")
    parser.add_argument("run", nargs="?", metavar="RUN", help="run directory, results.json "
                        "or run id (default: results/latest)")
    parser.add_argument("--root", default="results", help="where run ids are looked up")


def run(args: argparse.Namespace) -> int:
    """Print every invariant's verdict and violations; the exit status."""
    try:
        results = load_results(results_file(args.run, args.root))
    except ResultsError as exc:
        print(f"muxbench check: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for name, violations in check_all(results).items():
        print(f"{'FAIL' if violations else 'ok  '} {name}")
        for line in violations:
            print(f"     {line}")
        failed += bool(violations)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gate.invariants")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
