"""The C reference server: compiled on the fly, cached, optional.

A minimal C epoll echo server is the "limit" every Python model is read
against.  It is built with the machine's C compiler the first time it is
needed; where there is none, callers get None and say so instead of failing.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "reference"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "muxbench"


def compile_c(source: Path, name: str) -> Path | None:
    """Build `source` with `cc -O2` into the cache; None when no compiler exists.

    The binary's name carries a hash of the source, so an edited source is
    rebuilt and concurrent builders never see a half-written file (it is
    linked under a temporary name and renamed into place).
    """
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    binary = CACHE / f"{name}-{digest}"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        out = Path(tmp) / name
        result = subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(source)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"cannot build {source.name}: {result.stderr.strip()}")
        os.replace(out, binary)
    return binary


def reference_server_command() -> list[str] | None:
    """argv of the C echo server ("c-epoll"); append --host/--port. None without a compiler."""
    binary = compile_c(HERE / "echo_epoll.c", "echo_epoll")
    return None if binary is None else [str(binary)]


def reference_server_template() -> str | None:
    """The C echo server's command line, to be told where to listen: "{host}" and
    "{port}" stand for the address (as in `muxbench bench --server`). None without
    a compiler."""
    argv = reference_server_command()
    return None if argv is None else f"{shlex.join(argv)} --host {{host}} --port {{port}}"
