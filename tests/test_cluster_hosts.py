"""`muxbench cluster up/down/status`: hosts made of network namespaces, for real.

One cluster (a server host and two generator hosts) is brought up for the
module under a prefix of its own, so that it can stand beside a user's; every
test reads it, the last one takes it down and checks that nothing is left.
Other cases bring up (or fail to) small clusters of their own, beside it.
Where namespaces cannot be made (not root, no `ip`, no Dask) the cases that
need them are skipped, saying why.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from bench.cluster import hosts
from bench.cluster.daemons import matching, workers_of
from tests.support import MUXBENCH, ROOT, kill_group, listening, spawn, wait_for

PREFIX = f"mxt{os.getpid() % 10000}"
UP_TIMEOUT = 60.0
CPUS = sorted(os.sched_getaffinity(0))
SPLIT = ["--server-cpus", str(CPUS[0])] if len(CPUS) > 1 else []  # the server host's own CPU


def _cannot() -> str | None:
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    if why := hosts.missing_privilege():
        return f"network namespaces: {why}"
    try:
        import distributed  # noqa: F401
    except ImportError:
        return "Dask (the cluster extra) is not installed"
    return None


needs_netns = pytest.mark.skipif(_cannot() is not None, reason=str(_cannot()))


def cluster_cli(*args: str, prefix: str = PREFIX, user: list[str] = (),
                timeout: float = UP_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([*user, *MUXBENCH, "cluster", *args, "--prefix", prefix], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def leftovers(prefix: str) -> list[str]:
    """Anything of the prefix's cluster still here: namespaces, links, its state
    directory, processes naming it."""
    found = hosts.existing(prefix)
    left = found["namespaces"] + found["links"]
    if hosts.state_dir(prefix).exists():
        left.append(str(hosts.state_dir(prefix)))
    left += [f"pid {p.pid}: {' '.join(p.info['cmdline'])[:120]}"
             for p in matching(f"{hosts.state_dir(prefix)}/")]
    return left


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def free_subnet(avoid: str) -> str:
    for net in ipaddress.ip_network("198.19.200.0/21").subnets(new_prefix=24):
        if str(net) != avoid and hosts.subnet_in_use(str(net)) is None:
            return str(net)
    raise AssertionError("no free /24 in 198.19.200.0/21")


@pytest.fixture(scope="module")
def cluster():
    """(the state up wrote, up's completed process); down in any case after."""
    try:
        up = cluster_cli("up", "--generators", "2", "--port", "0", "--rate-limit", "1gbit",
                         "--delay", "1", *SPLIT)
        assert up.returncode == 0, up.stderr
        yield hosts.load_state(PREFIX), up
    finally:
        cluster_cli("down")


@needs_netns
def test_up_makes_hosts_on_a_bridge(cluster):
    state, up = cluster
    assert [h["name"] for h in state["hosts"]] == ["server", "gen1", "gen2"]
    assert up.stdout.splitlines()[-1] == state["scheduler"]["address"]
    assert hosts.state_of_scheduler(state["scheduler"]["address"]) == state
    assert hosts.state_of_scheduler("tcp://198.18.255.254:1") is None
    net = ipaddress.ip_network(state["subnet"])
    assert net.subnet_of(hosts.BENCH_NET)
    assert state["scheduler"]["address"].startswith(f"tcp://{state['bridge_address']}:")
    made = hosts.existing(PREFIX)
    assert made["namespaces"] == sorted(h["netns"] for h in state["hosts"])
    assert set(made["links"]) == {state["bridge"], *(h["veth"] for h in state["hosts"])}
    for host in state["hosts"]:
        assert ipaddress.ip_address(host["address"]) in net
        inside = hosts.ip("-4", "-o", "addr", "show", "dev", "eth0", netns=host["netns"])
        assert f"{host['address']}/24" in inside
        assert "UP" in hosts.ip("link", "show", "lo", netns=host["netns"])


@needs_netns
@pytest.mark.skipif(not SPLIT, reason="one CPU: nothing to split between hosts")
def test_server_host_has_its_own_cpu(cluster):
    state, _ = cluster
    pinned = [("scheduler", state["scheduler"])]
    pinned += [(h["role"], h["worker"]) for h in state["hosts"]]
    affinity = {role: set() for role, _ in pinned}
    for role, daemon in pinned:
        affinity[role] |= set(psutil.Process(daemon["pid"]).cpu_affinity())
    assert affinity == {"server": {CPUS[0]}, "generator": set(CPUS[1:]),
                        "scheduler": set(CPUS[1:])}


def in_netns(netns: str, code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", code, *args],
                          capture_output=True, text=True, timeout=20)


ECHO_CLIENT = """\
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(b"over the bridge\\n"); s.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := s.recv(4096):
        got += chunk
print(got.decode().strip())
"""


@needs_netns
def test_tcp_crosses_from_generator_host_to_server_host(cluster):
    state, _ = cluster
    server, gen = state["hosts"][0], state["hosts"][1]
    argv = ["ip", "netns", "exec", server["netns"], *MUXBENCH, "serve", "epoll", "--host",
            server["address"], "--port", "0"]
    with listening(argv) as echo:
        for source in (gen["netns"], state["hosts"][2]["netns"]):
            done = in_netns(source, ECHO_CLIENT, echo.host, str(echo.port))
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == "over the bridge"
        # And from the root namespace, through the bridge.
        with socket.create_connection(echo.address, timeout=5) as sock:
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"


@needs_netns
def test_dask_workers_carry_their_role_in_their_namespace(cluster):
    from distributed import Client

    state, _ = cluster
    with Client(state["scheduler"]["address"], timeout=20, set_as_default=False) as client:
        seen = {w["name"]: w for w in workers_of(client)}
        assert {name: w["resources"] for name, w in seen.items()} == {
            "server": {"server": 1}, "gen1": {"generator": 1}, "gen2": {"generator": 1}}
        assert {name: w["nthreads"] for name, w in seen.items()} == dict.fromkeys(seen, 1)
        for host in state["hosts"]:
            assert seen[host["name"]]["host"] == host["address"]
        # A task asking for the role runs inside that role's namespace.  (The test
        # module is not importable on a worker: the tasks are functions that are.)
        for role in ("server", "generator"):
            inode = client.submit(os.stat, "/proc/self/ns/net", resources={role: 1},
                                  pure=False).result(20).st_ino
            names = {h["netns"] for h in state["hosts"] if h["role"] == role}
            assert inode in {os.stat(f"/run/netns/{ns}").st_ino for ns in names}
        kinds = client.submit(hosts.network_kind, state["hosts"][0]["address"],
                              resources={"generator": 1}, pure=False).result(20)
        assert kinds == "veth"
        own = client.submit(hosts.network_kind, state["hosts"][0]["address"],
                            resources={"server": 1}, pure=False).result(20)
        assert own == "loopback"


@pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (ip) is not installed")
def test_network_kind_of_loopback():
    assert hosts.network_kind("127.0.0.1") == "loopback"
    assert hosts.network_kind("127.0.0.1", "127.0.0.1") == "loopback"


@needs_netns
def test_status_says_everything_is_up(cluster):
    state, _ = cluster
    done = cluster_cli("status")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"cluster '{PREFIX}': up")
    assert "accepting" in lines[1] and "not accepting" not in lines[1]
    for host in state["hosts"]:
        line = next(x for x in lines if f" {host['netns']} " in x)
        assert "namespace present, link present" in line and line.endswith("alive")
    assert "links: rate limit 1gbit each way on every host link (tbf)" in lines \
        or "netem" in lines[-1]


@needs_netns
def test_rate_limit_on_both_ends_and_netem_said(cluster):
    state, up = cluster
    for host in state["hosts"]:
        assert " tbf " in subprocess.run(["tc", "qdisc", "show", "dev", host["veth"]],
                                         capture_output=True, text=True).stdout
        inside = subprocess.run(["tc", "-n", host["netns"], "qdisc", "show", "dev", "eth0"],
                                capture_output=True, text=True).stdout
        assert " tbf " in inside or " netem " in inside
    if state["shaping"]["skipped"]:  # a kernel without netem: said, on stderr
        assert "skipped: this kernel has no netem" in up.stderr
    else:
        assert "netem" in " ".join(state["shaping"]["applied"])


@needs_netns
def test_not_root_is_one_line_and_makes_nothing():
    closed = [p for p in (ROOT, *ROOT.parents) if not os.stat(p).st_mode & 0o001]
    if closed:  # e.g. a checkout under a mktemp -d directory (mode 0700)
        pytest.skip(f"an unprivileged user cannot reach this checkout ({closed[-1]} is closed)")
    prefix = f"{PREFIX}n"
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    done = cluster_cli("up", prefix=prefix, user=nobody)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "root" in done.stderr
    assert leftovers(prefix) == []


@pytest.mark.parametrize("args", [["--generators", "0"], ["--rate-limit", "fast"],
                                  ["--subnet", "10.0.0.0/24"], ["--loss", "101"]])
def test_bad_options_are_usage_errors(args):
    done = subprocess.run([*MUXBENCH, "cluster", "up", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2 and "usage:" in done.stderr


@needs_netns
def test_status_sees_a_dead_worker_and_down_needs_no_state_file(cluster):
    prefix = f"{PREFIX}s"
    try:
        up = cluster_cli("up", "--generators", "1", "--port", "0", "--subnet",
                         free_subnet(cluster[0]["subnet"]), prefix=prefix)
        assert up.returncode == 0, up.stderr
        worker = hosts.load_state(prefix)["hosts"][1]["worker"]
        os.kill(worker["pid"], signal.SIGKILL)  # a host whose worker died: status says so
        assert wait_for(lambda: not running(worker["pid"]))
        status = cluster_cli("status", prefix=prefix)
        assert status.returncode == 1
        assert status.stdout.startswith(f"cluster '{prefix}': broken")
        assert f"worker pid {worker['pid']} gone" in status.stdout
        shutil.rmtree(hosts.state_dir(prefix))  # lost, say removed by hand; the processes run on
        assert leftovers(prefix) != []
        done = cluster_cli("down", prefix=prefix)
        assert done.returncode == 0, done.stderr
        assert "2 processes ended" in done.stdout  # the scheduler and the live worker
        assert leftovers(prefix) == []
    finally:
        cluster_cli("down", prefix=prefix)


# Dask preloads, run by a daemon as it starts: a scheduler that fails, workers
# that never register (so `up` is surely still waiting when it is signalled).
FAILING_PRELOAD = "raise RuntimeError('refused by a preload')\n"
STALLING_PRELOAD = "import time\ntime.sleep(120)\n"


def up_with_preload(prefix: str, tmp_path, cluster, daemon: str, code: str,
                    *extra: str) -> subprocess.Popen:
    preload = tmp_path / "preload.py"
    preload.write_text(code)
    env = {**os.environ, f"DASK_DISTRIBUTED__{daemon.upper()}__PRELOAD": f'["{preload}"]'}
    argv = [*MUXBENCH, "cluster", "up", "--prefix", prefix, "--generators", "1", "--port",
            "0", "--subnet", free_subnet(cluster[0]["subnet"]), *extra]
    return spawn(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)


@needs_netns
@pytest.mark.parametrize(("daemon", "code", "reason"), [
    ("scheduler", FAILING_PRELOAD, "the scheduler exited: RuntimeError: refused by a preload"),
    ("worker", STALLING_PRELOAD, "did not register within 2 s")])
def test_failed_up_removes_what_it_made(cluster, tmp_path, daemon, code, reason):
    prefix = f"{PREFIX}f"
    up = up_with_preload(prefix, tmp_path, cluster, daemon, code, "--timeout", "2")
    try:
        _, err = up.communicate(timeout=60)
        assert up.returncode == 1
        assert err.startswith("muxbench cluster up: ") and err.count("\n") == 1
        assert reason in err
        assert leftovers(prefix) == []
    finally:
        kill_group(up)
        cluster_cli("down", prefix=prefix)


@needs_netns
def test_up_killed_while_waiting_undoes_itself(cluster, tmp_path):
    prefix = f"{PREFIX}k"
    up = up_with_preload(prefix, tmp_path, cluster, "worker", STALLING_PRELOAD)
    try:
        def workers_started() -> bool:
            with contextlib.suppress(OSError, ValueError):
                return all("worker" in h for h in hosts.load_state(prefix)["hosts"])
            return False
        assert wait_for(workers_started, timeout=30)
        up.send_signal(signal.SIGTERM)
        _, err = up.communicate(timeout=30)
        assert up.returncode == 128 + signal.SIGTERM, err
        assert leftovers(prefix) == []
    finally:
        kill_group(up)
        cluster_cli("down", prefix=prefix)


@needs_netns
def test_down_leaves_nothing_and_runs_twice(cluster):
    state, _ = cluster
    pids = [state["scheduler"]["pid"], *(h["worker"]["pid"] for h in state["hosts"])]
    first = cluster_cli("down")
    assert first.returncode == 0, first.stderr
    assert leftovers(PREFIX) == []
    assert [p for p in pids if running(p)] == []
    second = cluster_cli("down")
    assert second.returncode == 0, second.stderr
    assert "nothing" in second.stdout
    assert cluster_cli("status").returncode == 1
