"""The Dask scheduler and workers of a namespace cluster: started to outlive the
command that starts them, found again and ended by `cluster down`.

They are daemons on purpose, so not started with muxbench.procs (whose children
die with their parent): each is a plain Popen in a session and process group of
its own, its output in a log under the cluster's state directory.  A worker runs
with no nanny (a nanny would restart a dead worker and hide its death from the
engine), one thread, no memory management and no dashboard.  Every daemon's
command line names the state directory, which is how `down` finds one whose pid
was never recorded (a state file lost, an `up` killed halfway).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from muxbench.procs import tail

READY_POLL = 0.1
# A Python traceback's last line; a chained one's first is its cause.
EXCEPTION_RE = re.compile(r"^[\w.]*(Error|Exception|Exit)\b.*", re.M)
KILL_WAIT = 5.0
# Where `ip netns add` keeps a namespace (iproute2's NETNS_RUN_DIR).
NETNS_DIR = Path("/run/netns")


class DaemonError(RuntimeError):
    """A daemon did not start or the cluster did not become ready; says why."""


def start(argv: list[str], log: Path, netns: str | None = None,
          cpus: list[int] | None = None) -> dict:
    """Start argv as a daemon, inside netns and pinned to cpus if given; its record
    for the state file.  (taskset and nsenter each exec what follows, so the pid
    recorded is the daemon's own.)

    nsenter enters the network namespace alone, where `ip netns exec` would also
    mount a sysfs of the namespace's own over /sys: that hides /sys/fs/cgroup,
    and with it the per-server cgroup whose CPU accounting a local trial has
    (psutil's clock ticks instead, 10 ms steps against a 0.4 s window)."""
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, cpus)), *argv]
    if netns:
        argv = ["nsenter", f"--net={NETNS_DIR / netns}", *argv]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=log.parent, start_new_session=True)
    return {"pid": proc.pid, "pgid": proc.pid, "log": str(log), "cpus": cpus,
            "started": psutil.Process(proc.pid).create_time()}


def scheduler_argv(state: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", host,
            "--port", str(port), "--no-dashboard", "--no-show",
            "--scheduler-file", str(state / "scheduler.json")]


def worker_argv(state: Path, host: dict) -> list[str]:
    # The scheduler file, not an address: workers start beside the scheduler
    # and wait for it to listen, rather than after it.
    return [sys.executable, "-m", "distributed.cli.dask_worker",
            "--scheduler-file", str(state / "scheduler.json"), "--host", host["address"],
            "--name", host["name"], "--resources", f"{host['role']}=1", "--nthreads", "1",
            "--no-nanny", "--memory-limit", "0", "--no-dashboard",
            "--local-directory", str(state / "work")]


def why(log: str) -> str:
    """What a daemon's log says went wrong: the first and last exceptions, or its end."""
    try:
        found = [m.group(0).strip() for m in EXCEPTION_RE.finditer(Path(log).read_text())]
    except OSError:
        found = []
    if not found:
        return tail(Path(log)) or f"nothing in {log}"
    return " ... ".join(dict.fromkeys([found[0], found[-1]]))


def alive(record: dict) -> bool:
    """Is the recorded process still running (the same one, not a reused pid)?"""
    try:
        proc = psutil.Process(record["pid"])
        return (proc.create_time() == record["started"]
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def scheduler_address(state: Path, scheduler: dict, timeout: float) -> str:
    """Wait for the scheduler to write its address; DaemonError if it died first."""
    path = state / "scheduler.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads(path.read_text())["address"]
        if not alive(scheduler):
            raise DaemonError(f"the scheduler exited: {why(scheduler['log'])}")
        time.sleep(READY_POLL)
    raise DaemonError(f"the scheduler did not listen within {timeout:.0f} s: "
                      f"{why(scheduler['log'])}")


def wait_ready(address: str, hosts: list[dict], timeout: float) -> None:
    """Return once every host's worker has registered with its resource and its
    namespace's address; DaemonError naming the first worker that died or was
    missing at the timeout."""
    from distributed import Client  # the cluster extra: imported only when asked for

    deadline = time.monotonic() + timeout
    with Client(address, timeout=timeout, set_as_default=False) as client:
        while True:
            seen = {w["name"]: w for w in workers_of(client)}
            missing = [h for h in hosts if not _registered(seen.get(h["name"]), h)]
            if not missing:
                return
            dead = [h for h in missing if not alive(h["worker"])]
            if dead or time.monotonic() > deadline:
                host = (dead or missing)[0]
                what = "exited" if dead else f"did not register within {timeout:.0f} s"
                raise DaemonError(f"the worker of {host['netns']} {what}: "
                                  f"{why(host['worker']['log'])}")
            time.sleep(READY_POLL * 3)


def workers_of(client) -> list[dict]:
    """Every worker the scheduler knows, as scheduler_info() describes one."""
    try:  # since 2025.4 scheduler_info() lists 5 workers unless asked for all
        info = client.scheduler_info(n_workers=-1)
    except TypeError:
        info = client.scheduler_info()
    return list(info["workers"].values())


def _registered(worker: dict | None, host: dict) -> bool:
    return (worker is not None and worker.get("resources") == {host["role"]: 1}
            and worker["host"] == host["address"])


def reachable(address: str, timeout: float = 1.0) -> bool:
    """Does something accept TCP connections at tcp://HOST:PORT?"""
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def matching(fragment: str) -> list[psutil.Process]:
    """Live processes whose command line mentions fragment (a state directory)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        if any(fragment in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def kill(records: list[dict], fragment: str, namespace_pids: list[int]) -> int:
    """SIGKILL the recorded daemons' groups, any process naming fragment, and the
    given pids (what is still inside the namespaces); wait for them to go.
    Returns how many processes were killed."""
    targets: dict[int, psutil.Process] = {}
    for record in records:
        if alive(record):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record["pgid"], signal.SIGKILL)
            targets[record["pid"]] = psutil.Process(record["pid"])
    for proc in matching(fragment):
        targets[proc.pid] = proc
    for pid in namespace_pids:
        with contextlib.suppress(psutil.Error):
            targets.setdefault(pid, psutil.Process(pid))
    for proc in targets.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + KILL_WAIT
    while (left := [p for p in targets.values() if _still_running(p)]) \
            and time.monotonic() < deadline:
        time.sleep(READY_POLL / 5)
    if left:
        raise DaemonError(f"processes survived SIGKILL: {[p.pid for p in left]}")
    return len(targets)


def _still_running(proc: psutil.Process) -> bool:
    """False once proc is gone or a zombie (reaped here when it is our child:
    `up` cleaning up after itself).  A daemon's parent is whoever adopted it,
    and if that never reaps, a zombie is all that is left of it: no socket,
    namespace or CPU."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(proc.pid, os.WNOHANG)
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
