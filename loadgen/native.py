"""The C echo client (loadgen/c/echo_client.c), built on demand; the yardstick of
`benchmarks/loadgen_rate.py`.  None where there is no C compiler."""

from __future__ import annotations

from pathlib import Path

from muxbench.native import compile_c

SOURCE = Path(__file__).resolve().parent / "c" / "echo_client.c"


def echo_client_command() -> list[str] | None:
    """argv of the C client; append --port P [--conns N --size B --duration S --warmup S]."""
    binary = compile_c(SOURCE, "echo_client")
    return None if binary is None else [str(binary)]
