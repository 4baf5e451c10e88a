"""The C reference server: a minimal C epoll echo server, the limit every model is read against.

It is built (muxbench/native.py) the first time it is needed; where there is
no C compiler, callers get None and say so instead of failing.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from muxbench.native import compile_c

HERE = Path(__file__).resolve().parent / "reference"
# Its name in a run, beside the models': a command server (`muxbench bench --server`).
C_SERVER = "c-epoll"


def reference_server_command() -> list[str] | None:
    """argv of the C echo server (C_SERVER); append --host/--port. None without a compiler."""
    binary = compile_c(HERE / "echo_epoll.c", "echo_epoll")
    return None if binary is None else [str(binary)]


def reference_server_template() -> str | None:
    """The C echo server's command line, to be told where to listen: "{host}" and
    "{port}" stand for the address (as in `muxbench bench --server`). None without
    a compiler."""
    argv = reference_server_command()
    return None if argv is None else f"{shlex.join(argv)} --host {{host}} --port {{port}}"
