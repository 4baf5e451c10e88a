"""`muxbench bench` on the c100k scenarios at small counts, under a lowered descriptor limit.

    python -m tests.c100k_small NOFILE N[,N...] BENCH-ARGS...

sets RLIMIT_NOFILE to NOFILE (soft and hard: what the harness, its servers and
its load generators inherit, as a box with a smaller limit would give them),
gives both c100k scenarios the points N... (each with its workers, as the
real ones), then runs the bench with the rest of the arguments.  A test-only
point list: the real one is a hundred thousand connections.
"""

from __future__ import annotations

import dataclasses
import resource
import sys

from bench.run import scenarios
from muxbench.cli import main


def small(nofile: int, counts: list[int]) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    for name, key, fixed in (("c100k_idle", "clients", {}),
                             ("c100k_sparse", "idle", {"active": 3, "size": 64})):
        points = scenarios.c100k_pts(key, counts, **fixed)
        scenarios.SCENARIOS[name] = dataclasses.replace(
            scenarios.SCENARIOS[name], suites=dict.fromkeys(scenarios.SUITES, points))


if __name__ == "__main__":
    small(int(sys.argv[1]), [int(n) for n in sys.argv[2].split(",")])
    sys.exit(main(["bench", *sys.argv[3:]]))
