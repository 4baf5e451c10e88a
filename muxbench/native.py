"""The C yardsticks (the reference server, the echo client), compiled on demand and cached.

Each is built with the machine's C compiler the first time it is needed;
where there is none, callers get None and say so instead of failing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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
