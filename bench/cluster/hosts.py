"""Hosts made of network namespaces: one server host, N generator hosts, one bridge.

Each host is a namespace `<prefix>-server` or `<prefix>-genK` holding one end of
a veth pair (`eth0` inside); the other end, named like the namespace, is a port
of the bridge `<prefix>-br0` in the root namespace, which holds the /24's .254
(where the Dask scheduler listens).  Every address comes from 198.18.0.0/15, the
block RFC 2544 reserves for benchmarks, so nothing made here can collide with a
real network.  What was made is written to /run/muxbench/<prefix>/cluster.json
(`load_state`), which `cluster down`, `cluster status` and the Dask engine read;
`remove` also works from names alone, for a state file lost with a crash.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

RUN_ROOT = Path("/run/muxbench")
DEFAULT_PREFIX = "muxbench"
BENCH_NET = ipaddress.ip_network("198.18.0.0/15")
# Interface names hold 15 characters: `<prefix>-gen64` must fit, and a dash in a
# prefix would make one prefix's names look like another's (`a-` vs `a-b-`).
PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,7}")
MAX_GENERATORS = 64
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21  # ip netns add mounts, hence SYS_ADMIN too
IP_TIMEOUT = 10.0
REMOVE_WAIT = 5.0


class HostsError(RuntimeError):
    """A namespace, link or address could not be made or read; the message says which."""


def state_dir(prefix: str) -> Path:
    return RUN_ROOT / prefix


def subnet_for(prefix: str) -> ipaddress.IPv4Network:
    """The /24 a prefix's hosts live in: 198.18.0.0/24 for the default prefix,
    another of the block's 512 for any other, so that two clusters can stand side
    by side (two prefixes may still share one: `up` checks the /24 is free)."""
    index = 0 if prefix == DEFAULT_PREFIX else 1 + zlib.crc32(prefix.encode()) % 511
    return list(BENCH_NET.subnets(new_prefix=24))[index]


def plan(prefix: str, generators: int, subnet: ipaddress.IPv4Network | None = None) -> dict:
    """Names and addresses of a cluster, before anything is made."""
    net = subnet or subnet_for(prefix)
    if not net.subnet_of(BENCH_NET) or net.prefixlen != 24:
        raise HostsError(f"{net} is not a /24 inside {BENCH_NET}")
    base = net.network_address
    hosts = [{"name": "server", "role": "server"}]
    hosts += [{"name": f"gen{k}", "role": "generator"} for k in range(1, generators + 1)]
    for number, host in enumerate(hosts, start=1):
        host.update(netns=f"{prefix}-{host['name']}", address=str(base + number),
                    veth=f"{prefix}-{host['name']}", veth_inside="eth0")
    return {"prefix": prefix, "subnet": str(net), "bridge": f"{prefix}-br0",
            "bridge_address": str(base + 254), "hosts": hosts}


def missing_privilege() -> str | None:
    """Why this process cannot make namespaces, or None when it can."""
    status = Path("/proc/self/status").read_text()
    effective = int(re.search(r"^CapEff:\s*([0-9a-f]+)", status, re.M).group(1), 16)
    lacking = [name for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                                      (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"))
               if not effective >> bit & 1]
    return f"needs root ({' and '.join(lacking)} missing)" if lacking else None


def ip(*args: str, netns: str | None = None) -> str:
    """Run `ip ARGS` (inside netns if given); its stdout, HostsError with its stderr."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostsError(f"{' '.join(argv)}: {exc}") from None
    if done.returncode != 0:
        raise HostsError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def subnet_in_use(net: str) -> str | None:
    """The interface of this namespace already holding an address in net, if any."""
    wanted = ipaddress.ip_network(net)
    for link in json.loads(ip("-j", "-4", "addr", "show") or "[]"):
        for entry in link.get("addr_info", []):
            if ipaddress.ip_address(entry["local"]) in wanted:
                return link["ifname"]
    return None


def make(layout: dict, record: Callable[[str, str], None]) -> None:
    """Make the bridge, the namespaces, their veths and addresses; `record(kind, name)`
    is told of each thing as soon as it exists, so a failure halfway can undo it."""
    bridge = layout["bridge"]
    ip("link", "add", bridge, "type", "bridge")
    record("links", bridge)
    ip("addr", "add", f"{layout['bridge_address']}/24", "dev", bridge)
    ip("link", "set", bridge, "up")
    for host in layout["hosts"]:
        ns = host["netns"]
        ip("netns", "add", ns)
        record("namespaces", ns)
        ip("link", "add", host["veth"], "type", "veth", "peer", "name", host["veth_inside"],
           "netns", ns)
        record("links", host["veth"])
        ip("link", "set", host["veth"], "master", bridge, "up")
        ip("addr", "add", f"{host['address']}/24", "dev", host["veth_inside"], netns=ns)
        ip("link", "set", host["veth_inside"], "up", netns=ns)
        ip("link", "set", "lo", "up", netns=ns)


def _tc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tc", *args], capture_output=True, text=True, timeout=IP_TIMEOUT)


def shape(layout: dict, rate: str | None, delay_ms: float | None,
          loss_pct: float | None) -> tuple[list[str], list[str]]:
    """Shape every host's link in both directions (the veth's two ends); what was
    done and what was skipped, a line each.  Delay and loss need netem, which some
    kernels are built without: then they are skipped, said so, and the rate
    limit (tbf, in every kernel) still goes on."""
    said: list[str] = []
    skipped: list[str] = []
    netem = []
    if delay_ms:
        netem += ["delay", f"{delay_ms}ms"]
    if loss_pct:
        netem += ["loss", f"{loss_pct}%"]
    ends = [(h["veth"], None) for h in layout["hosts"]]
    ends += [(h["veth_inside"], h["netns"]) for h in layout["hosts"]]
    if netem:
        for dev, ns in ends:
            argv = [*(["-n", ns] if ns else []), "qdisc", "add", "dev", dev, "root", "netem",
                    *netem, *(["rate", rate] if rate else [])]
            done = _tc(*argv)
            if done.returncode != 0:
                skipped.append("delay/loss skipped: this kernel has no netem "
                            f"(tc: {done.stderr.strip() or 'failed'})")
                break
        else:
            said.append(f"netem on every host link: {' '.join(netem)}")
            return said + ([f"rate limit {rate} each way (netem)"] if rate else []), skipped
    if rate:
        for dev, ns in ends:
            argv = [*(["-n", ns] if ns else []), "qdisc", "replace", "dev", dev, "root", "tbf",
                    "rate", rate, "burst", "256kb", "latency", "50ms"]
            done = _tc(*argv)
            if done.returncode != 0:
                raise HostsError(f"tc {' '.join(argv)}: {done.stderr.strip()}")
        said.append(f"rate limit {rate} each way on every host link (tbf)")
    return said, skipped


def existing(prefix: str) -> dict[str, list[str]]:
    """The namespaces and links of the root namespace named `<prefix>-...`."""
    mark = f"{prefix}-"
    namespaces = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    links = [link["ifname"] for link in json.loads(ip("-j", "link", "show") or "[]")]
    return {"namespaces": sorted(n for n in namespaces if n.startswith(mark)),
            "links": sorted(n for n in links if n.startswith(mark))}


def namespace_pids(netns: str) -> list[int]:
    with contextlib.suppress(HostsError):
        return [int(pid) for pid in ip("netns", "pids", netns).split()]
    return []


def remove(prefix: str) -> dict[str, list[str]]:
    """Delete every `<prefix>-` namespace and link (the caller has ended the
    processes in them); what was found.  The kernel dismantles a deleted
    namespace, and the veth whose end it held, a moment later: a link may vanish
    between being listed and being deleted, and only what is still there after
    REMOVE_WAIT seconds is an error."""
    found = existing(prefix)
    deadline = time.monotonic() + REMOVE_WAIT
    while True:
        now = existing(prefix)
        if not now["namespaces"] and not now["links"]:
            return found
        if time.monotonic() > deadline:
            raise HostsError(f"still here {REMOVE_WAIT:.0f} s after deleting them: "
                             f"{' '.join(now['namespaces'] + now['links'])}")
        for ns in now["namespaces"]:
            with contextlib.suppress(HostsError):  # raced: checked on the next turn
                ip("netns", "del", ns)
        for link in now["links"]:
            with contextlib.suppress(HostsError):
                ip("link", "del", link)
        time.sleep(0.05)


def save_state(state: dict) -> Path:
    """Write cluster.json atomically: a reader never sees half a file."""
    path = state_dir(state["prefix"]) / "cluster.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(partial, path)
    return path


def load_state(prefix: str = DEFAULT_PREFIX) -> dict:
    """The state `cluster up` wrote for prefix: `scheduler` (its `address` is what
    a Dask client connects to), `hosts` (each with `name`, `role` server or
    generator, `netns`, `address`, `veth` and its worker's pid), `bridge`,
    `bridge_address`, `subnet`.  FileNotFoundError when no such cluster is up."""
    return json.loads((state_dir(prefix) / "cluster.json").read_text())


def state_of_scheduler(address: str) -> dict | None:
    """The state of the namespace cluster whose scheduler is at address, if one
    of this machine's is: how a client given only an address learns its hosts."""
    for path in sorted(RUN_ROOT.glob("*/cluster.json")):
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(path.read_text())
            if (state.get("scheduler") or {}).get("address") == address:
                return state
    return None


def network_kind(peer: str, local: str | None = None) -> str:
    """Which network a connection from `local` to `peer` crosses, seen from this
    process's namespace: "loopback", "veth" (veth pairs, or a bridge of them),
    "nic" (a device with hardware behind it, virtual machines' included) or
    "virtual" (anything else: tunnels, bridges over a NIC ...)."""
    argv = ["-j", "route", "get", peer, *(["from", local] if local else [])]
    routes = json.loads(ip(*argv) or "[]")
    if not routes or "dev" not in routes[0]:
        raise HostsError(f"no route from {local or 'here'} to {peer}")
    return _link_kind(routes[0]["dev"])


def _link_kind(dev: str) -> str:
    # From `ip` alone, not /sys/class/net: a process that entered a namespace's
    # network only (nsenter) still sees the host's sysfs.
    if dev == "lo":
        return "loopback"
    info = json.loads(ip("-j", "-d", "link", "show", "dev", dev) or "[{}]")[0]
    if "parentbus" in info:  # a device on a bus: hardware, or a VM's virtio
        return "nic"
    kind = info.get("linkinfo", {}).get("info_kind")
    if kind == "bridge":
        ports = json.loads(ip("-j", "link", "show", "master", dev) or "[]")
        kinds = {_link_kind(port["ifname"]) for port in ports}
        return kinds.pop() if len(kinds) == 1 else "virtual"
    return "veth" if kind == "veth" else "virtual"
