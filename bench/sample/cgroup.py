"""A throw-away CPU-accounting cgroup per trial, where the machine lets us make one.

The kernel charges every task in a cgroup, however it was born and whoever
reaps it, in nanoseconds; psutil's tree walk sees only what is alive at the
moment it looks (plus the children a process reaped) and in 10 ms clock ticks.
So when a cgroup can be created (root, cgroup v1 `cpuacct` or a writable v2
tree) the server is moved into one, and it is the CPU source.  Anything else
falls back to psutil, and the results say which was used.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PREFIX = "muxbench-"


def _hierarchy() -> tuple[Path, str] | None:
    """(directory to create groups in, "v1"|"v2"), or None."""
    v1 = CGROUP_ROOT / "cpuacct"
    if (v1 / "cpuacct.usage_user").exists():
        return v1, "v1"
    for v2 in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        if (v2 / "cgroup.controllers").exists():
            return v2, "v2"
    return None


class CpuCgroup:
    """One cgroup directory; `add(pid)` moves a process in, `cpu()` reads it."""

    def __init__(self, path: Path, version: str) -> None:
        self.path = path
        self.version = version

    @classmethod
    def create(cls, name: str) -> CpuCgroup | None:
        found = _hierarchy()
        if found is None or os.environ.get("MUXBENCH_NO_CGROUP"):
            return None
        base, version = found
        _remove_stale(base)
        path = base / f"{PREFIX}{os.getpid()}-{name}"
        try:
            path.mkdir()
        except OSError:
            return None
        group = cls(path, version)
        try:
            group.cpu()
        except (OSError, ValueError):
            group.remove()
            return None
        return group

    def add(self, pid: int) -> bool:
        try:
            (self.path / "cgroup.procs").write_text(f"{pid}\n")
            return True
        except OSError:
            return False

    def procs(self) -> list[int]:
        try:
            return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def threads(self) -> int:
        """Tasks in the group: the threads of every process."""
        try:
            return len((self.path / ("tasks" if self.version == "v1" else "cgroup.threads"))
                       .read_text().split())
        except OSError:
            return 0

    def wait_empty(self, timeout: float) -> list[int]:
        """Wait for killed tasks to leave; returns those still there at the timeout."""
        deadline = time.monotonic() + timeout
        while (left := self.procs()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return left

    def cpu(self) -> tuple[float, float, float]:
        """Cumulative (total seconds, user share, system share) of every task ever in
        the group.  The total is the scheduler's exact runtime; the user/system
        split comes from tick sampling (coarse and, on a tickless VM, noisy), so it
        is only good for dividing a total in proportion."""
        if self.version == "v1":
            total = int((self.path / "cpuacct.usage").read_text()) / 1e9
            user = int((self.path / "cpuacct.usage_user").read_text()) / 1e9
            system = int((self.path / "cpuacct.usage_sys").read_text()) / 1e9
        else:
            stat = dict(line.split() for line in
                        (self.path / "cpu.stat").read_text().splitlines())
            total = int(stat["usage_usec"]) / 1e6
            user, system = int(stat["user_usec"]) / 1e6, int(stat["system_usec"]) / 1e6
        return total, user, system

    def remove(self, timeout: float = 2.0) -> None:
        """rmdir once the (killed) tasks are gone; a group is only removable empty."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)


def remove_own() -> None:
    """Remove every (empty) group this process made: the last word of a run's clean-up."""
    found = _hierarchy()
    if found is not None:
        for path in found[0].glob(f"{PREFIX}{os.getpid()}-*"):
            CpuCgroup(path, found[1]).remove(timeout=1.0)


def _remove_stale(base: Path) -> None:
    """Remove groups left by runs that were killed outright (rmdir fails on busy ones)."""
    for path in base.glob(f"{PREFIX}*"):
        owner = path.name[len(PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            with contextlib.suppress(OSError):
                path.rmdir()
