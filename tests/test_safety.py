"""Safety: loopback by default, no remote load without asking, no shell, bounded load.

No test here sends a packet anywhere but 127.0.0.1: binding 0.0.0.0 is
checked by connecting through loopback, and the load generator's refusal of a
remote target is checked with an audit hook that kills it at its first
connect(), before any packet could leave.
"""

from __future__ import annotations

import argparse
import ast
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest

from bench.run.scenarios import C100K, SCENARIOS, SUITES, plan
from bench.run.suite import _spec
from bench.sample.environment import placement
from muxbench import procs
from muxbench.cli import main
from servers.models import MODELS
from tests.support import ROOT, recv_exactly, serve

SOURCE_DIRS = ("servers", "loadgen", "bench", "muxbench", "benchmarks", "tests")


# ---- servers bind loopback unless told otherwise, and say so when told ---------------------


def listening_addresses(pid: int) -> set[str]:
    return {c.laddr.ip for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def test_server_binds_loopback_by_default():
    with serve("epoll") as server:
        assert server.host == "127.0.0.1"
        assert listening_addresses(server.proc.pid) == {"127.0.0.1"}
        assert "reachable from the network" not in server.log()


def test_server_told_to_bind_everywhere_warns_once_and_serves_loopback():
    with serve("epoll", "echo", "--host", "0.0.0.0") as server:
        assert listening_addresses(server.proc.pid) == {"0.0.0.0"}
        warnings = [line for line in server.log().splitlines()
                    if "reachable from the network" in line]
        assert len(warnings) == 1 and "not a loopback address" in warnings[0], server.log()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"hi\n")
            assert recv_exactly(sock, 3) == b"hi\n"


# ---- the load generator refuses remote targets before connecting ---------------------------

# Runs `muxbench load` with an audit hook that exits 99 at the first connect() it attempts.
GUARDED = textwrap.dedent("""
    import os, sys
    def hook(event, args):
        if event == "socket.connect":
            os.write(2, f"connect attempted to {args[1]!r}\\n".encode())
            os._exit(99)
    sys.addaudithook(hook)
    from muxbench.cli import main
    sys.exit(main(["load", *sys.argv[1:]]))
""")


def guarded_load(*args: str) -> subprocess.CompletedProcess:
    return procs.run([sys.executable, "-c", GUARDED, *args], timeout=60, cwd=ROOT,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("host", ["10.1.2.3", "2001:db8::1", "0.0.0.0"])
def test_load_refuses_non_loopback_target_before_any_connect(host):
    result = guarded_load("--host", host, "--port", "9", "--clients", "1", "--duration", "0.1")
    assert result.returncode == 2, result.stderr
    assert "connect attempted" not in result.stderr
    assert result.stderr.startswith("muxbench load: refusing non-loopback target")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_the_connect_guard_does_catch_a_connect():
    """The control: with a loopback target the same guard sees the connect (so the
    refusals above are refusals, not a guard that never fires)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = guarded_load("--host", "127.0.0.1", "--port", str(port), "--clients", "1",
                          "--duration", "0.1", "--procs", "1", "--warmup", "0")
    # The load generator connects from forked workers, which keep the hook: one of them
    # exits 99 and the generator reports it as an unreachable server.
    assert "connect attempted to ('127.0.0.1'" in result.stderr, result.stderr


# ---- no shell anywhere ---------------------------------------------------------------------

SPAWNERS = {"Popen", "run", "call", "check_call", "check_output"}
ALWAYS_SHELL = {("os", "system"), ("os", "popen"), ("subprocess", "getoutput"),
                ("subprocess", "getstatusoutput"), ("asyncio", "create_subprocess_shell")}


def shell_uses(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        if (owner, name) in ALWAYS_SHELL or name == "create_subprocess_shell":
            found.append((node.lineno, f"{owner}.{name}"))
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append((node.lineno, "shell=" + ast.unparse(kw.value)))
        first = node.args[0] if node.args else None
        if name in SPAWNERS and owner == "subprocess" and (
                isinstance(first, (ast.JoinedStr, ast.BinOp))
                or (isinstance(first, ast.Constant) and isinstance(first.value, str))):
            found.append((node.lineno, "a command string"))
    return found


def test_no_subprocess_goes_through_a_shell():
    per_dir = {d: sorted((ROOT / d).rglob("*.py")) for d in SOURCE_DIRS}
    assert all(per_dir.values()), per_dir  # every directory was found: none goes unchecked
    files = [p for found in per_dir.values() for p in found]
    assert len(files) > 40  # the tree was found
    offenders = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in files
                 for line, what in shell_uses(ast.parse(path.read_text(), str(path)))]
    assert offenders == []


@pytest.mark.parametrize("snippet", [
    "os.system('ls')", "subprocess.run('ls', shell=True)", "subprocess.Popen(f'ls {x}')",
    "subprocess.getoutput('ls')", "os.popen('ls')", "subprocess.check_output(cmd, shell=flag)",
])
def test_the_shell_check_catches_each_form(snippet):
    assert shell_uses(ast.parse(snippet)) != []


def test_the_shell_check_passes_argument_lists():
    assert shell_uses(ast.parse("subprocess.run(['ls', '-l'], shell=False)\n"
                                "subprocess.Popen([*cmd, 'x'], start_new_session=True)")) == []


# ---- every load loop is bounded in count and time ------------------------------------------


@pytest.mark.parametrize("option, value", [("--duration", "3601"), ("--warmup", "601"),
                                           ("--drain", "61"), ("--connect-timeout", "61"),
                                           ("--duration", "inf")])
def test_load_refuses_unbounded_settings(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["load", "--port", "9", option, value])
    assert exit_info.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("suite", SUITES)
def test_every_planned_trial_bounds_its_load_in_count_and_time(suite):
    args = argparse.Namespace(suite=suite, duration_scale=1.0, ready_timeout=15.0)
    models = [m for m in MODELS if MODELS[m].unavailable_reason() is None]
    where = placement()
    specs = [_spec(p, args, {}, where)
             for p in plan(suite, list(SCENARIOS.values()), models, 1)]
    assert specs
    for spec in specs:
        argv = spec.load_argv(12345, where)
        clients = int(argv[argv.index("--clients") + 1]) if "--clients" in argv else 10
        duration = float(argv[argv.index("--duration") + 1])
        # One process's descriptors bound every scenario but the C100K ones, whose
        # points the harness checks against the box before they run (bench/run/capacity.py).
        most = max(C100K) + 10 if spec.family else 20_000  # sparse: 10 active beside
        assert 0 < duration <= 3600 and 0 < clients <= most, argv
        assert spec.load_timeout() < 3600, (spec.scenario, spec.point)
