"""The Dask side of `muxbench bench --cluster`: connect, find the hosts by role, close.

`local` starts a cluster on this machine (distributed's SpecCluster, one
process per worker, each under a nanny that restarts it if it dies): one
server worker and generator workers, each generator pinned to its own CPUs
where the machine has enough (else they share the CPUs the server does not
use).  `tcp://HOST:PORT` joins a running scheduler, whatever started it
(`dask scheduler` and `dask worker`, `dask ssh`, SSHCluster, a batch system,
`muxbench cluster up`).  Either way a worker says its role by a Dask resource,
`server` or `generator`; the roles are read afresh for every trial, so a
worker that was restarted or joined late is found again.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

LOCAL = "local"
CPUS_ENV = "MUXBENCH_WORKER_CPUS"  # a local generator worker's CPUs (bench/cluster/remote.py)
CONNECT_TIMEOUT = 10.0  # to reach a running scheduler (Dask retries a refused connection)
START_TIMEOUT = 60.0  # for a local cluster's workers to start and register


class ClusterError(Exception):
    """No cluster to run on, or none with the roles a trial needs; the message says why."""


@dataclass(frozen=True)
class Host:
    name: str     # "server", "gen1", ...: what tables and reasons call it
    worker: str   # the Dask worker's address
    address: str  # the host's IP address (the server listens there)
    role: str     # "server" or "generator"

    def as_dict(self) -> dict:
        return {"host": self.name, "worker": self.worker, "address": self.address,
                "role": self.role}


def check_address(address: str) -> str:
    """`local` or `tcp://HOST:PORT`; ValueError (a usage error) otherwise."""
    if address == LOCAL:
        return address
    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise ValueError(f"--cluster {address!r}: expected 'local' or tcp://HOST:PORT")
    return address


def _network_from_here(server: str) -> str:
    """Run on a generator host: the kind of link its route to the server leaves by."""
    from bench.cluster.hosts import HostsError, network_kind

    try:
        return network_kind(server)
    except (HostsError, OSError):  # no iproute2 there: judge by the address
        return "loopback" if ipaddress.ip_address(server).is_loopback else "unknown"


def _local_cluster(generators: int):
    from distributed import Nanny, Scheduler, SpecCluster

    cpus = sorted(os.sched_getaffinity(0))
    rest = cpus[1:] or cpus  # the server's placement takes the first CPU (placement())
    common = {"nthreads": 2, "host": "127.0.0.1", "dashboard_address": None,
              "silence_logs": 40}
    workers = {"server": {"cls": Nanny, "options": {**common, "resources": {"server": 1}}}}
    for i in range(generators):
        own = [rest[i]] if len(rest) >= generators else rest
        workers[f"gen{i + 1}"] = {"cls": Nanny, "options": {
            **common, "resources": {"generator": 1},
            "env": {CPUS_ENV: ",".join(map(str, own))}}}
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
    return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=40)


def _workers(dask_scheduler) -> dict[str, dict]:
    """Run on the scheduler: its workers now, with their names and resources.  Asked
    of the scheduler itself, not of the client's copy, which may lag."""
    return {address: {"name": ws.name, "resources": dict(ws.resources)}
            for address, ws in dask_scheduler.workers.items()}


class Cluster:
    """A distributed.Client, and the cluster it started (for `local`)."""

    def __init__(self, address: str, generators: int | None = None) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise ClusterError("--cluster needs the 'distributed' package: "
                               "pip install 'muxbench[cluster]' (make install does)") from None
        self.address, self.local = address, None
        try:
            if address == LOCAL:
                count = generators or max(2, len(os.sched_getaffinity(0)) - 1)
                self.local = _local_cluster(count)
                self.client = Client(self.local, timeout=START_TIMEOUT)
                self.client.wait_for_workers(count + 1, timeout=START_TIMEOUT)
            else:
                # Refused is refused: say so now, where Dask would retry until its timeout.
                parts = urlsplit(address)
                socket.create_connection((parts.hostname, parts.port), CONNECT_TIMEOUT).close()
                self.client = Client(address, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            self.close()
            raise ClusterError(f"cannot reach a Dask scheduler at {address}: {exc}") from None

    def hosts(self) -> tuple[Host, list[Host]]:
        """The server host and the generator hosts, as the scheduler knows them now."""
        workers = self.client.run_on_scheduler(_workers)
        servers, generators = [], []
        for worker, info in sorted(workers.items(), key=lambda kv: str(kv[1].get("name"))):
            resources = info.get("resources") or {}
            host = urlsplit(worker).hostname or worker
            name = str(info.get("name", worker))
            if resources.get("server"):
                servers.append(Host(name if not name.isdigit() else "server", worker, host,
                                    "server"))
            elif resources.get("generator"):
                label = name if not name.isdigit() else f"gen{len(generators) + 1}"
                generators.append(Host(label, worker, host, "generator"))
        if not servers:
            raise ClusterError(f"no worker of {self.address} has the resource 'server' "
                               "(start one with: dask worker ADDRESS --resources server=1)")
        if not generators:
            raise ClusterError(f"no worker of {self.address} has the resource 'generator' "
                               "(start them with: dask worker ADDRESS --resources generator=1)")
        return servers[0], generators

    def network(self, generator: Host, server: Host) -> str:
        """Which network a trial crosses (loopback, veth, nic, ...), as the route from
        the generator host to the server host says (bench/cluster/hosts.py)."""
        return self.client.run(_network_from_here, server.address,
                               workers=[generator.worker])[generator.worker]

    def alive(self) -> set[str]:
        return set(self.client.run_on_scheduler(_workers))

    def close(self) -> None:
        client, self.client = getattr(self, "client", None), None
        if client is not None:
            client.close()
        if self.local is not None:
            self.local.close()
            self.local = None
