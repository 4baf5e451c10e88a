"""`muxbench chat` driven as a user would: in a pseudo-terminal, and piped.

Every client runs against a real `muxbench serve epoll --protocol chat`, in its
own session, and is killed in `finally` whatever happens.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    MUXBENCH,
    ROOT,
    kill_group,
    recv_until_closed,
    serve,
    spawn,
    wait_for,
)

TIMEOUT = 10.0  # generous: only a hang should ever reach it
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, from /proc (readable while it is a zombie too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def is_zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _take_terminal() -> None:
    # As a login shell would: the pty becomes the controlling terminal of the
    # client's new session, so Ctrl-C typed on it sends SIGINT to the client.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def terminal_is_sane(fd: int) -> bool:
    """Line editing and echo back on, as they were before the client ran."""
    lflag = termios.tcgetattr(fd)[3]
    return bool(lflag & termios.ICANON) and bool(lflag & termios.ECHO)


class PtyClient:
    """`muxbench chat` with a pseudo-terminal as its stdin and stdout."""

    def __init__(self, port: int, name: str) -> None:
        master, slave = os.openpty()
        # Wide enough that no test line wraps; a 0x0 size would leave it to guesswork.
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 200, 0, 0))
        env = {**os.environ, "TERM": "xterm", "INPUTRC": "/dev/null"}
        try:
            self.proc = spawn([*MUXBENCH, "chat", "--port", str(port), "--name", name],
                              stdin=slave, stdout=slave, stderr=subprocess.PIPE, cwd=ROOT,
                              env=env, preexec_fn=_take_terminal)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self.master = master
        self.name = name
        self.output = b""
        self.mark = 0  # expect() searches output from here on

    def expect(self, text: str, timeout: float = TIMEOUT) -> None:
        """Wait until `text` appears after the mark; move the mark past it."""
        needle = text.encode()
        deadline = time.monotonic() + timeout
        while (found := self.output.find(needle, self.mark)) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"{self.name}: no {text!r} in {self.output[self.mark:]!r}")
        self.mark = found + len(needle)

    def _read(self, timeout: float) -> bool:
        if not select.select([self.master], [], [], timeout)[0]:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the client closed the terminal's last slave end
            return False
        self.output += data
        return bool(data)

    def ready(self) -> None:
        self.expect(f"{self.name}> ")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def say(self, text: str) -> None:
        """Type a line and wait for the server to send it back."""
        self.type(text + "\r")
        self.expect(f"[{self.name}] : {text}")

    def wait(self, timeout: float = TIMEOUT) -> tuple[int, str]:
        """Exit status and stderr, once the client has exited by itself."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} did not exit; output {self.output!r}") from None
        return status, self.proc.stderr.read().decode()

    def close(self) -> None:
        kill_group(self.proc)
        self.proc.stderr.close()
        os.close(self.master)


@pytest.fixture
def chat_server():
    with serve("epoll", "chat") as server:
        yield server


@contextlib.contextmanager
def pty_clients(port: int, *names: str) -> Iterator[list[PtyClient]]:
    clients: list[PtyClient] = []
    try:
        for name in names:
            clients.append(PtyClient(port, name))
        for client in clients:
            client.ready()
        yield clients
    finally:
        for client in clients:
            client.close()


def run_chat(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """`muxbench chat ARGS` with piped stdin, stdout and stderr."""
    proc = spawn([*MUXBENCH, "chat", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, cwd=ROOT)
    try:
        out, err = proc.communicate(stdin, timeout=TIMEOUT * 2)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        kill_group(proc)


def test_two_terminals_see_each_other_and_exit_is_only_a_word(chat_server):
    with pty_clients(chat_server.port, "alice", "bob") as (alice, bob):
        # Each waits for its own echo first, so both are members of the room
        # before the lines the other must see are sent.
        alice.say("hello from alice")
        bob.say("hi from bob")
        alice.expect("[bob] : hi from bob")
        alice.say("please exit now")
        bob.expect("[alice] : please exit now")
        bob.say("still here?")
        alice.expect("[bob] : still here?")
        assert alice.proc.poll() is None and bob.proc.poll() is None


def test_incoming_line_does_not_garble_the_line_being_typed(chat_server):
    with pty_clients(chat_server.port, "alice", "bob") as (alice, bob):
        alice.say("ready")
        alice.type("half-typ")
        alice.expect("half-typ")
        bob.say("interruption")
        alice.expect("[bob] : interruption")
        # Printed above the prompt, which comes back with the unfinished line...
        alice.expect("alice> half-typ")
        # ...which is still being edited: finishing it sends the whole line.
        alice.type("ed line\r")
        alice.expect("[alice] : half-typed line")
        bob.expect("[alice] : half-typed line")


def test_quit_and_ctrl_d_leave_cleanly(chat_server):
    with pty_clients(chat_server.port, "alice", "bob", "carol") as (alice, bob, carol):
        alice.say("bye")
        alice.type("/quit\r")
        assert alice.wait() == (0, "")
        assert terminal_is_sane(alice.master)
        bob.say("after alice")
        bob.type("\x04")  # Ctrl-D on an empty line: end of input
        assert bob.wait() == (0, "")
        carol.expect("[bob] : after alice")
        carol.say("last one")
        assert b"/quit" not in carol.output  # a command, never sent as a line


def test_ctrl_c_interrupts_and_restores_the_terminal(chat_server):
    with pty_clients(chat_server.port, "alice") as (alice,):
        alice.say("hello")
        alice.type("unfinished")
        alice.expect("unfinished")
        assert not terminal_is_sane(alice.master)  # readline reads key by key
        alice.type("\x03")
        status, err = alice.wait()
        assert status == 130
        assert err.strip() == "muxbench chat: interrupted"
        assert terminal_is_sane(alice.master)


def test_server_death_ends_client_at_once_without_spinning(chat_server):
    with pty_clients(chat_server.port, "alice") as (alice,):
        alice.say("anyone?")
        pid = alice.proc.pid
        before = cpu_seconds(pid)
        time.sleep(0.5)
        assert cpu_seconds(pid) - before < 0.2, "idle client is burning CPU"
        os.killpg(chat_server.proc.pid, signal.SIGKILL)
        # The textbook client ignores recv() == 0 and loops forever at 100% CPU.
        exited = wait_for(lambda: is_zombie(pid), timeout=TIMEOUT)
        spent = cpu_seconds(pid) - before
        assert exited, f"client still running, {spent:.2f} s of CPU since the server died"
        assert spent < 0.5
        status, err = alice.wait()
        assert status == 1
        assert terminal_is_sane(alice.master)
        assert err.strip() == "muxbench chat: server closed the connection"


def test_piped_lines_go_out_with_the_name_and_all_come_back(chat_server):
    lines = [b"hi", b"please exit now", "\u00e9t\u00e9".encode(), b"", b"no newline at end"]
    result = run_chat("--port", str(chat_server.port), "--name", "bot", stdin=b"\n".join(lines))
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert result.stdout == b"".join(b"[bot] : " + line + b"\n" for line in lines if line)


def test_piped_line_reaches_a_terminal_client(chat_server):
    with pty_clients(chat_server.port, "alice") as (alice,):
        alice.say("listening")
        result = run_chat("--port", str(chat_server.port), "--name", "bot",
                          stdin=b"from a script\n/quit\nlost\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"[bot] : from a script\n"
        alice.expect("[bot] : from a script")


def test_refused_connection_is_one_line_and_exit_2():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connect is refused
        result = run_chat("--port", str(unused.getsockname()[1]), stdin=b"hi\n")
    assert result.returncode == 2
    assert result.stdout == b""
    assert result.stderr.decode().count("\n") == 1
    assert "Connection refused" in result.stderr.decode()


@pytest.mark.parametrize("args", [
    ("--host", "bad host!"),  # invalid as a name, so no resolver query leaves the machine
    ("--port", "0"),
    ("--port", "65536"),
    ("--port", "http"),
    ("--name", ""),
])
def test_bad_host_port_or_name_exit_2_without_traceback(args):
    extra = ["--port", "9"] if args[0] != "--port" else []
    proc = run_chat(*extra, *args)
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(b"muxbench chat: ")


def test_leaving_waits_a_bounded_time_for_a_server_that_never_closes():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        # Never accepted until the client is gone: the kernel completes the
        # handshake and queues its bytes, but nobody ever answers or closes.
        result = run_chat("--port", str(listener.getsockname()[1]), "--name", "bot",
                          stdin=b"anyone?\n")
        assert result.returncode == 0
        assert b"did not close" in result.stderr
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            # Everything typed, then a clean end of stream: a half-close, not a reset.
            assert recv_until_closed(conn) == b"[bot] : anyone?\n"
