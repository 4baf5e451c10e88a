"""What the machine was when a run was taken: the metadata stored beside every result.

Placement changes loopback latency 3-7x on a small VM, so where the server and
the load generator ran is part of every result, as is everything else that
decides whether two runs may be compared (kernel, CPU, package versions,
commit, somaxconn, the fd limit, the load before and after).
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from muxbench import ROOT

PACKAGES = ("psutil", "numpy", "rich", "hdrhistogram", "matplotlib", "scipy", "uvloop",
            "muxbench")


@dataclass
class Placement:
    pinned: bool
    server_cpus: list[int]
    client_cpus: list[int]
    note: str

    def as_dict(self) -> dict:
        return asdict(self)


def placement(server_cpus: list[int] | None = None) -> Placement:
    """Server on `server_cpus` (default: the first usable CPU); load generator,
    sampler and orchestrator on every other usable one.  ValueError: CPUs that
    are not usable, or that leave none for the load generator."""
    cpus = sorted(os.sched_getaffinity(0))
    if server_cpus is None:
        if len(cpus) < 2:
            return Placement(False, cpus, cpus,
                             f"only CPU {cpus[0]} is usable: server, load generator and sampler "
                             "share it, unpinned; latency and CPU figures include that "
                             "contention")
        server_cpus = cpus[:1]
    if not set(server_cpus) <= set(cpus):
        raise ValueError(f"server CPUs {_cpus(server_cpus)} are not all usable here "
                         f"(usable: {_cpus(cpus)})")
    clients = [c for c in cpus if c not in server_cpus]
    if not clients:
        raise ValueError(f"server CPUs {_cpus(server_cpus)} leave no CPU for the load "
                         "generator")
    return Placement(True, server_cpus, clients,
                     f"server pinned to CPU {_cpus(server_cpus)}; load generator, sampler and "
                     f"orchestrator on CPU {_cpus(clients)}")


def _cpus(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def packages() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def damon_monitors() -> int | None:
    """Running DAMON monitors (kdamond kernel threads), None without DAMON's
    sysfs.  A VM may use one to reclaim idle memory; its work grows with the
    pages many processes share, and it runs on any CPU, the load generator's
    included."""
    base = Path("/sys/kernel/mm/damon/admin/kdamonds")
    if not base.is_dir():
        return None
    return sum(_read(str(state)) == "on" for state in base.glob("*/state"))


def loadavg() -> list[float]:
    return list(os.getloadavg())


def environment(where: Placement) -> dict:
    somaxconn = _read("/proc/sys/net/core/somaxconn")
    return {
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "packages": packages(),
        "git_commit": git_commit(),
        "somaxconn": int(somaxconn) if somaxconn and somaxconn.isdigit() else None,
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "damon_monitors": damon_monitors(),
        "loadavg_before": loadavg(),
        "loadavg_after": None,
        "hostname": socket.gethostname(),
        "placement": where.as_dict(),
    }
