"""`muxbench bench --server NAME=COMMAND`: a server of any form, measured like a model.

The servers here are real programs started from a command line as a user
would give it -- a short Python script, socat, the C reference -- and servers
that never get ready.  Each run is a real, short suite (the quick suite's
points, a fraction of its windows) into a temporary --out.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from matplotlib.colors import to_hex

from bench import results as R
from bench.report.measures import COLOURS, colour, model_sort_key
from bench.run.scenarios import SCENARIOS
from bench.sample.environment import placement
from muxbench.procs import group_members
from servers.reference import C_SERVER, reference_server_command
from tests.support import MUXBENCH, ROOT

# A server of another form: a plain threaded Python script, echo or chat.  On its
# first connection (the harness's readiness probe, so after the harness placed it)
# it appends where it runs to NOTE: the pid and group to look for afterwards, and
# the CPUs it may use.
SCRIPT = textwrap.dedent("""
    import json, os, socketserver, sys, threading
    protocol, host, port, note = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    lock, members, noted = threading.Lock(), set(), []

    def remember():
        with lock:
            if not noted:
                noted.append(1)
                with open(note, "a") as f:
                    f.write(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0),
                                        "cpus": sorted(os.sched_getaffinity(0))}) + "\\n")

    class Echo(socketserver.BaseRequestHandler):
        def handle(self):
            remember()
            while data := self.request.recv(65536):
                self.request.sendall(data)

    class Chat(socketserver.StreamRequestHandler):
        def handle(self):
            remember()
            with lock:
                members.add(self.wfile)
            try:
                for line in self.rfile:
                    with lock:
                        for member in list(members):
                            try:
                                member.write(line)
                            except OSError:
                                members.discard(member)
            finally:
                with lock:
                    members.discard(self.wfile)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address, daemon_threads, request_queue_size = True, True, 4096

    Server((host, port), Echo if protocol == "echo" else Chat).serve_forever()
""")

# Never ready: one exits at once with a complaint; the other forks a child and
# both wait without ever listening.
EXITS = "import sys; sys.exit('no such config file')"
DEAF = textwrap.dedent("""
    import json, os, sys, time
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0)}) + "\\n")
    print("waiting for a licence server", file=sys.stderr, flush=True)
    os.fork()
    time.sleep(60)
""")


def bench(out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    """A short quick-suite run into `out`: its process and results (None if none)."""
    run = subprocess.run([*MUXBENCH, "bench", "--suite", "quick", "--duration-scale", "0.3",
                          "--out", str(out), *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=180)
    latest = out / "latest"
    return run, (R.load_results(latest) if latest.exists() else None)


def script_server(tmp_path: Path, protocol: str = "echo") -> tuple[str, Path]:
    """(its --server command, the file it notes itself in)."""
    script, note = tmp_path / "server.py", tmp_path / "server.note"
    script.write_text(SCRIPT)
    return (f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {protocol} {{host}} "
            f"{{port}} {shlex.quote(str(note))}"), note


def notes(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def trials_of(data: dict, model: str) -> list[dict]:
    return [t for t in data["trials"] if t["model"] == model]


def assert_measured(trial: dict) -> None:
    """Measured, every message back, the server stopped and nothing of it left.

    "invalid" is allowed only when the load generator says it was itself the
    limit (a busy machine): the server still answered every message."""
    assert trial["status"] == "ok" or (trial["status"] == "invalid"
                                       and trial["load"]["valid"] is False), trial["reason"]
    load = trial["load"]
    if load["workload"] == "echo":
        assert load["sent"] > 0 and load["sent"] == load["received"], load
    elif load["workload"] == "chat":  # every line to every member, the sender included
        assert load["sent"] > 0 and load["sent"] * load["connected"] == load["received"], load
    assert (load["lost"], load["corrupted"], load["duplicated"]) == (0, 0, 0)
    assert trial["server"]["samples"] >= 1 and trial["server"]["pss_peak_bytes"] > 0
    if load["workload"] != "idle":  # idle clients may cost a server nothing in the window
        assert trial["server"]["cpu_s"] > 0
    assert trial["cleanup"]["remaining_after_kill"] == 0
    assert trial["cleanup"]["leftover_fds"] == 0


def running_with(marker: str) -> list[int]:
    """Live processes whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def test_a_script_server_is_measured_beside_a_built_in_model(tmp_path):
    command, note = script_server(tmp_path)
    run, data = bench(tmp_path / "out", "--server", f"mine={command}", "--models", "epoll",
                      "--scenarios", "echo_clients,idle")
    assert run.returncode == 0, run.stderr
    assert data["status"] == "complete"
    assert data["environment"]["servers"] == {"mine": {"command": command, "protocol": "echo"}}
    mine, epoll = trials_of(data, "mine"), trials_of(data, "epoll")
    assert {t["scenario"] for t in mine} == {"echo_clients", "idle"}
    for trial in mine:
        assert_measured(trial)
        assert trial["cleanup"]["leftover_procs"] == 0
    # The same record as a built-in model's at the same point, the same CPU accounting.
    for ours in mine:
        [theirs] = [t for t in epoll if (t["scenario"], t["point"]) == (ours["scenario"],
                                                                         ours["point"])]
        assert ours.keys() == theirs.keys()
        assert ours["server"].keys() == theirs["server"].keys()
        assert ours["server"]["cpu_source"] == theirs["server"]["cpu_source"]
    for meta in data["scenarios"].values():
        assert meta["models"] == ["epoll", "mine"]
    started = notes(note)
    assert len(started) == len(mine)  # one server per trial
    where = placement()
    for server in started:
        if where.pinned:
            assert server["cpus"] == where.server_cpus
        assert group_members(server["pgid"]) == []
    # The report shows it as a model, and says how it was started.
    report = subprocess.run([*MUXBENCH, "report", str(tmp_path / "out" / "latest"), "-q",
                             "--plots", str(tmp_path / "plots")], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "out" / "latest" / "REPORT.md").read_text()
    assert f"| servers run from a command line | mine (echo): {command} |" in text
    assert text.count("\n| mine | ") >= 2  # a row in each scenario's table, like epoll's
    assert text.count("\n| mine | ") == text.count("\n| epoll | ")


def test_a_command_server_is_drawn_in_a_colour_of_its_own():
    built_in = {to_hex(c) for c in COLOURS.values()}
    names = ["mine", "socat", "nginx", "my-server", "a", "b", "c", "d", "e", "f", "g", "h"]
    assert {to_hex(colour(name)) for name in names}.isdisjoint(built_in)
    assert colour("mine") == colour("mine")
    order = sorted(["mine", C_SERVER, "epoll", "aaa", "select"], key=model_sort_key)
    assert order == ["select", "epoll", "aaa", "mine", C_SERVER]  # the C limit last


@pytest.mark.skipif(shutil.which("socat") is None,
                    reason="socat is not installed (apt-get install socat)")
def test_socat_is_a_server_too(tmp_path):
    marker = f"socat-{os.getpid()}"  # its log name: a word of its command line to look for
    command = (f"socat -lp {marker} TCP-LISTEN:{{port}},bind={{host}},reuseaddr,fork,"
               "backlog=4096 EXEC:cat")
    run, data = bench(tmp_path, "--server", f"socat={command}", "--scenarios", "echo_clients")
    assert run.returncode == 0, run.stderr
    [trial] = data["trials"]
    assert trial["model"] == "socat"
    assert_measured(trial)
    assert running_with(marker) == []  # socat and every child it forked


@pytest.mark.skipif(reference_server_command() is None, reason="no C compiler")
def test_the_c_reference_runs_as_a_command_server(tmp_path):
    run, data = bench(tmp_path, "--models", C_SERVER, "--scenarios", "echo_clients")
    assert run.returncode == 0, run.stderr
    [trial] = data["trials"]
    assert trial["model"] == C_SERVER
    assert_measured(trial)
    command = data["environment"]["servers"][C_SERVER]["command"]
    assert shlex.split(command)[1:] == ["--host", "{host}", "--port", "{port}"]


def test_a_chat_server_runs_the_chat_scenarios_only(tmp_path):
    command, _ = script_server(tmp_path, "chat")
    run, data = bench(tmp_path / "out", "--server-protocol", "chat", "--server",
                      f"room={command}")
    assert run.returncode == 0, run.stderr
    chat = {name for name, s in SCENARIOS.items() if s.protocol == "chat" and s.models is None}
    assert {t["scenario"] for t in data["trials"]} == chat
    for trial in data["trials"]:
        assert trial["model"] == "room"
        assert_measured(trial)


def test_an_echo_server_runs_every_echo_scenario_open_to_all_models(tmp_path):
    run = subprocess.run([*MUXBENCH, "bench", "--suite", "quick", "--dry-run", "--server",
                          "mine=mine-server {port}", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PATH": f"{_fake_program(tmp_path)}:"
                                                    f"{os.environ['PATH']}"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1] == f"{len(lines) - 1} trials"
    ran = {line.split()[0] for line in lines[:-1]}
    assert {line.split()[1] for line in lines[:-1]} == {"mine"}  # no built-in model
    assert ran == {name for name, s in SCENARIOS.items()
                   if s.protocol == "echo" and s.models is None and "quick" in s.runs_in}


def _fake_program(tmp_path: Path) -> Path:
    """A directory with an executable `mine-server`: --server checks that its program exists."""
    program = tmp_path / "bin" / "mine-server"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    return program.parent


def test_a_server_that_never_gets_ready_fails_its_trials_and_leaves_nothing(tmp_path):
    deaf, note = tmp_path / "deaf.py", tmp_path / "deaf.note"
    deaf.write_text(DEAF)
    python = shlex.quote(sys.executable)
    run, data = bench(tmp_path / "out", "--ready-timeout", "1", "--scenarios", "echo_clients",
                      "--server", f"quits={python} -c {shlex.quote(EXITS)} {{port}}",
                      "--server", f"deaf={python} {shlex.quote(str(deaf))} {note} {{port}}")
    assert run.returncode == 0, run.stderr  # failed trials are results: the suite completes
    assert data["status"] == "complete"
    [quits], [never] = trials_of(data, "quits"), trials_of(data, "deaf")
    assert quits["status"] == never["status"] == "failed"
    assert quits["reason"] == "server did not start: exited with status 1: no such config file"
    assert never["reason"].startswith("server did not start: not listening on 127.0.0.1:")
    assert " after 1 s: waiting for a licence server;" in never["reason"]
    assert never["cleanup"]["leftover_procs"] == 1  # its child outlived it, and was killed
    for trial in (quits, never):
        assert trial["load"] is None and trial["cleanup"]["remaining_after_kill"] == 0
    [server] = notes(note)
    assert group_members(server["pgid"]) == []  # the server and its child
    assert running_with(str(note)) == []
    assert "complete: 2 trials (2 not ok)" in run.stderr
    assert quits["reason"] in run.stdout and never["reason"] in run.stdout  # shown as they end


@pytest.mark.parametrize("args, message", [
    (["--server", "mine"], "--server 'mine': expected NAME=COMMAND"),
    (["--server", "my server=cat {port}"], "a name is a letter"),
    (["--server", "9lives=cat {port}"], "a name is a letter"),
    (["--server", "epoll=cat {port}"], "--server epoll: the name is taken"),
    (["--server", f"{C_SERVER}=cat {{port}}"], f"--server {C_SERVER}: the name is taken"),
    (["--server", "all=cat {port}"], "--server all: the name is taken"),
    (["--server", "a=cat {port}", "--server", "a=cat {port}"], "--server a: given twice"),
    (["--server", "mine=cat --host {host}"], "the command must contain {port}"),
    (["--server", "mine="], "the command is empty"),
    (["--server", "mine=cat '{port}"], "cannot split the command"),
    (["--server", "mine=/no/such/server {port}"], "'/no/such/server' is not an executable"),
    (["--server-protocol", "chat"], "--server-protocol describes --server entries"),
    (["--server", "mine=cat {port}", "--models", "nosuch"], "unknown model or scenario: nosuch"),
])
def test_bad_server_values_are_one_line_and_status_2(tmp_path, args, message):
    run = subprocess.run([*MUXBENCH, "bench", "--out", str(tmp_path), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.startswith("muxbench bench: ") and run.stderr.count("\n") == 1
    assert message in run.stderr
    assert run.stdout == "" and not any(tmp_path.iterdir())  # nothing started or written
