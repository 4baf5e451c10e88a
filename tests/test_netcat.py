"""Every model with netcat as its client, the way a person first tries a server.

`nc -N` (netcat-openbsd, which `make install` puts on a bare machine as root)
shuts down its sending side at the end of its input and then prints what it
is sent until the server closes -- so each case also checks that a model
finishes a half-closed client: answers what it sent, then closes.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import subprocess

import pytest

from tests.support import AVAILABLE, piped, read_line, serve

NC = shutil.which("nc")
pytestmark = pytest.mark.skipif(
    NC is None, reason="no nc: `make install` installs netcat-openbsd when run as root")


def netcat(port: int) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """An interactive `nc -N` to 127.0.0.1:port.  Unbuffered: a line read_line()
    takes leaves nothing in a buffer that communicate() would not see."""
    return piped([NC, "-N", "127.0.0.1", str(port)], bufsize=0)


def one_shot(port: int, data: bytes) -> bytes:
    """`printf DATA | nc -N 127.0.0.1 PORT`: everything the server sent back."""
    done = subprocess.run([NC, "-N", "127.0.0.1", str(port)], input=data,
                          capture_output=True, timeout=20, check=True)
    return done.stdout


@pytest.mark.parametrize("model", AVAILABLE)
def test_echo_through_nc(model):
    blob = random.Random(model).randbytes(256 * 1024)  # more than one socket buffer
    with serve(model, "echo") as server:
        assert one_shot(server.port, b"hello\nworld\n") == b"hello\nworld\n"
        assert one_shot(server.port, blob) == blob


@pytest.mark.parametrize("model", AVAILABLE)
def test_chat_between_two_nc(model):
    with serve(model, "chat") as server, netcat(server.port) as ada:
        ada.stdin.write(b"ada here\n")
        ada.stdin.flush()
        assert read_line(ada) == b"ada here\n"  # her own line: she is in the room
        # A second client says one line and leaves: it hears itself, ada hears it.
        assert one_shot(server.port, b"bob here\nbye\n") == b"bob here\nbye\n"
        # With its input closed nc -N half-closes, and the server answers by closing.
        rest, _ = ada.communicate(timeout=5)
        assert rest == b"bob here\nbye\n"
        assert ada.returncode == 0
