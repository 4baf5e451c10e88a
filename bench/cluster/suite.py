"""`muxbench bench`, with `--cluster`: the suite of bench/run/suite.py, run here or on Dask.

The suite asks an opener where its trials run and drives the runner it gets
the same way either way: `run(index, display)` gives a trial's record,
`close()` stops whatever is left.  Without --cluster it is the local runner,
and nothing of Dask is imported; with it, a ClusterRunner
(bench/cluster/runner.py) on the cluster named, which the run's environment
records (address and hosts) and which is closed with the runner.
"""

from __future__ import annotations

import argparse
import sys

from bench.cluster import remote
from bench.cluster.engine import LOCAL, Cluster, ClusterError, check_address
from bench.run import suite
from bench.run.launch import TrialSpec
from bench.sample.environment import Placement


def configure(parser: argparse.ArgumentParser) -> None:
    suite.configure(parser)
    parser.add_argument("--cluster", default=None, metavar="ADDRESS",
                        help="run on a Dask cluster: 'local' (one started here) or "
                             "tcp://HOST:PORT (a running scheduler, e.g. the one `muxbench "
                             "cluster up` prints); workers with the resource 'server' serve, "
                             "those with 'generator' share the load (docs/cluster.md)")


def run(args: argparse.Namespace) -> int:
    if args.cluster is None:
        return suite.run(args)
    try:
        check_address(args.cluster)
    except ValueError as exc:
        print(f"muxbench bench: {exc}", file=sys.stderr)
        return 2
    return suite.run(args, cluster_opener)


def cluster_opener(args: argparse.Namespace, specs: list[TrialSpec],
                   where: Placement) -> tuple[_Closing, dict]:
    """A ClusterRunner on args.cluster, and what the run's environment records of it;
    ValueError for --server-cpus beside it, suite.OpenError when no cluster is there."""
    from bench.cluster.runner import ClusterRunner

    if args.server_cpus is not None:
        raise ValueError("--server-cpus pins the server on this machine; on a cluster the "
                         "server host places it (its first CPU): give one or the other")
    try:
        cluster = Cluster(args.cluster)
        try:
            server, generators = cluster.hosts()
        except ClusterError:
            cluster.close()
            raise
    except ClusterError as exc:
        raise suite.OpenError(str(exc)) from None
    place = cluster.client.run(remote.server_placement, workers=[server.worker])[server.worker]
    place["note"] = f"on server host {server.name} ({server.address}): {place['note']}"
    record = {"address": args.cluster if args.cluster == LOCAL else
              cluster.client.scheduler.address, "placement": place,
              "hosts": [h.as_dict() for h in (server, *generators)],
              "note": f"on {args.cluster}: server on host {server.name} ({server.address}), "
                      f"load from {', '.join(g.name for g in generators)}"}
    return _Closing(ClusterRunner(specs, cluster, not args.no_cgroup), cluster), record


class _Closing:
    """A ClusterRunner that also closes its cluster when the suite closes it."""

    def __init__(self, runner, cluster: Cluster) -> None:
        self.runner, self.cluster = runner, cluster
        self.specs = runner.specs

    def run(self, index: int, display):
        return self.runner.run(index, display)

    def drop(self, index: int) -> None:
        """Nothing to drop: a cluster trial's server starts only when it runs."""

    def close(self) -> None:
        try:
            self.runner.close()
        finally:
            self.cluster.close()
