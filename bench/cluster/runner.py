"""Runs a suite's trials on a Dask cluster, one at a time, in the shape of a local trial's record.

A trial: measure every host's clock offset; start the server on the server
host and wait until it listens; choose one window, a few seconds ahead (room
for every generator to start, connect and warm up), and give each generator
host that instant on its own clock with its share of the clients; snapshot the
server's CPU at the window's edges there; wait for the generators, watching
that every host stays in the cluster; then stop the server, merge the
generators' results and judge the trial as a local one is judged
(bench/run/outcome.py), plus the window check (bench/cluster/clock.py).  A host
lost mid-trial fails the trial with the reason; every process the trial
started on any host is killed before the next trial begins.
"""

from __future__ import annotations

import contextlib
import time
import traceback
import uuid
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

from bench.cluster import clock, remote
from bench.cluster.engine import Cluster, ClusterError, Host
from bench.cluster.merge import host_entry, merge_loads
from bench.cluster.share import shares
from bench.run.console import Display, describe
from bench.run.launch import TrialSpec
from bench.run.outcome import classify, figures, generator_bound
from bench.run.trial import blank_record, note

# Seconds from the orchestrator's go to the window: a generator's interpreter,
# its imports and Dask's hop, before its connections and warm-up.
START_LEAD_S = 2.0
POLL_S = 0.2  # how often a trial in flight looks at its futures
ALIVE_EVERY_S = 1.0  # and asks the scheduler whether its hosts are still there


class HostLost(Exception):
    """A host left the cluster, or what it ran for a trial failed, mid-trial."""


class ClusterRunner:
    def __init__(self, specs: list[TrialSpec], cluster: Cluster, use_cgroup: bool) -> None:
        self.specs, self.cluster, self.use_cgroup = specs, cluster, use_cgroup
        self.run_id = uuid.uuid4().hex[:12]  # names this run's servers on the workers
        self.max_generators: int | None = None  # use only the first N generator hosts
        self.futures: list = []

    def run(self, index: int, display: Display) -> dict:
        spec = self.specs[index]
        label = describe(spec.scenario, spec.model, spec.point, spec.repeat)
        display.started(label)
        t0 = time.monotonic()
        record = _record(spec)
        faulted = True
        try:
            self._trial(f"{self.run_id}-{index}", spec, record)
            faulted = False
        except (HostLost, ClusterError) as exc:
            record["status"], record["reason"] = "failed", str(exc)
        except Exception as exc:  # from Dask or a worker: this trial fails, the suite goes on
            record["status"] = "failed"
            # Where it was raised: an error from inside Dask says little by its name.
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            record["reason"] = (f"cluster error: {type(exc).__name__}: {exc} (raised in "
                                f"{Path(frame.filename).name}:{frame.lineno}, {frame.name})")
        finally:
            self._clean(faulted)
            record["duration_s"] = round(time.monotonic() - t0, 3)
        display.finished(label, record)
        return record

    def _submit(self, host: Host, fn, *args):
        future = self.cluster.client.submit(fn, *args, workers=[host.worker],
                                            allow_other_workers=False, pure=False)
        self.futures.append((host, future))
        return future

    def _wait(self, pending: list, timeout: float) -> list:
        """Every future's result, in order; HostLost as soon as one host is gone."""
        deadline = time.monotonic() + timeout
        results = [None] * len(pending)
        left = dict(enumerate(pending))
        next_check, gone = time.monotonic() + ALIVE_EVERY_S, []
        while left:
            for i, (host, future) in list(left.items()):
                if future.status == "finished":
                    results[i] = future.result()
                    del left[i]
                elif future.status in ("error", "cancelled", "lost"):
                    raise HostLost(f"{host.role} host {host.name} failed: {_error(future)}")
            if not left:
                break
            if time.monotonic() >= next_check:  # a question to the scheduler: not too often
                next_check = time.monotonic() + ALIVE_EVERY_S
                alive = self.cluster.alive()
                gone = [host for host, _ in left.values() if host.worker not in alive]
            if gone:
                raise HostLost(f"{gone[0].role} host {gone[0].name} lost: its worker "
                               f"{gone[0].worker} left the cluster mid-trial")
            if time.monotonic() > deadline:
                names = ", ".join(host.name for host, _ in left.values())
                raise HostLost(f"no answer from {names} within {timeout:.0f} s")
            # Any outcome ends the wait; an error is read from the status above.
            with contextlib.suppress(FutureTimeout, Exception):
                next(iter(left.values()))[1].result(timeout=POLL_S)
        return results

    def _trial(self, key: str, spec: TrialSpec, record: dict) -> None:
        server, generators = self.cluster.hosts()
        generators = generators[:self.max_generators]
        offsets = {h.name: clock.measure(self.cluster.client, h.worker)
                   for h in (server, *generators)}
        parts = shares(spec.load_args, len(generators))
        generators = generators[:len(parts)]
        record["clock_offsets"] = {name: o.as_dict() for name, o in offsets.items()}
        record["network"] = self.cluster.network(generators[0], server)
        record["hosts"] = [{**server.as_dict(), "placement": None, "server": None}]
        served_spec = spec.with_host(server.address)
        started = self._wait([(server, self._submit(server, remote.start_server, key,
                                                    served_spec, self.use_cgroup))],
                             spec.ready_timeout + 30)[0]
        record["hosts"][0]["placement"] = started["placement"]
        if started["failure"]:
            record["reason"] = started["failure"]
            self._finish_server(key, server, record)
            return
        lead = START_LEAD_S + spec.warmup + spec.connections / 1000
        start_ns = time.time_ns() + int(lead * 1e9)
        end_ns = start_ns + int(spec.duration * 1e9)
        record["window"] = {"start_ns": start_ns, "end_ns": end_ns}
        off = offsets[server.name].offset_ns
        self._wait([(server, self._submit(server, remote.arm_window, key, start_ns + off,
                                          end_ns + off, spec.warmup))], 30)
        timeout = lead + spec.load_timeout()
        runs = [(host, self._submit(host, remote.run_generator, key,
                                    served_spec.with_host(server.address, part), started["port"],
                                    start_ns + offsets[host.name].offset_ns, timeout))
                for host, part in zip(generators, parts, strict=True)]
        outputs = self._wait(runs, timeout + 30)
        stats = self._finish_server(key, server, record)
        self._judge(spec, record, generators, outputs, offsets, stats)

    def _finish_server(self, key: str, server: Host, record: dict) -> dict:
        done = self._wait([(server, self._submit(server, remote.finish_server, key))], 60)[0]
        record["cleanup"] = done["cleanup"]
        record["server"] = done["stats"]
        record["hosts"][0]["server"] = done["stats"]
        return done

    def _judge(self, spec: TrialSpec, record: dict, generators: list[Host], outputs: list[dict],
               offsets: dict, served: dict) -> None:
        names = [h.name for h in generators]
        record["hosts"] += [{**h.as_dict(), **host_entry(h.name, out["load"]),
                             "cpus": out.get("cpus")}
                            for h, out in zip(generators, outputs, strict=True)]
        missing = [(name, out) for name, out in zip(names, outputs, strict=True)
                   if out["load"] is None]
        if missing:
            name, out = missing[0]
            record["reason"] = (f"generator host {name}: load generator exited with status "
                                f"{out['exit_status']} and no results: "
                                f"{out['stderr'] or 'no message'}")
            return
        loads = [out["load"] for out in outputs]
        load = merge_loads(loads, names, spec.duration)
        load["window"] = record["window"]
        stats = record["server"]
        record.update(load=load, derived=figures(stats, load),
                      client={"cpu_s": load["client_cpu_s"], "source": "generator hosts",
                              "window": None})
        outcome = {"timed_out": False, "exit_status": max(o["exit_status"] or 0 for o in outputs),
                   "stderr": " | ".join(o["stderr"] for o in outputs if o["stderr"]),
                   "timeout_s": spec.load_timeout()}
        status, reason = classify(spec.workload, load, outcome, served["exit_status"],
                                  served["log"])
        margin = clock.margin_ns(spec.duration)
        missed = [why for h, out in zip(generators, outputs, strict=True)
                  if (why := clock.missed(h.name, out["load"].get("window"),
                                          record["window"]["start_ns"],
                                          record["window"]["end_ns"], offsets[h.name], margin))]
        if missed and status != "failed":  # a window of its own is no part of the sum
            status = "invalid"
            reason = "; ".join([*([reason] if reason else []), *missed])
        record["status"], record["reason"] = status, reason
        record["generator_bound"] = generator_bound(status, load) and not missed
        if served.get("uncounted"):
            note(record, f"system calls not counted: {served['uncounted']}")

    def _clean(self, faulted: bool) -> None:
        """After a fault (or Ctrl-C): cancel what is in flight and kill what any
        host still runs."""
        futures, self.futures = self.futures, []
        if not faulted:
            return
        pending = [f for _, f in futures if f.status == "pending"]
        if pending:
            self.cluster.client.cancel(pending, force=True)
        self.close()

    def close(self) -> None:
        """Kill every process a trial started, on every host (after Ctrl-C or a fault)."""
        with contextlib.suppress(Exception):  # a lost cluster has nothing left to clean
            self.cluster.client.run(remote.cleanup, on_error="ignore")


def _error(future) -> str:
    try:
        return f"{type(future.exception()).__name__}: {future.exception()}"
    except Exception as exc:  # a cancelled future has no exception to read
        return str(exc) or type(exc).__name__


def _record(spec: TrialSpec) -> dict:
    return {**blank_record(spec, "failed", None), "hosts": [], "network": None,
            "clock_offsets": {}, "window": None}
