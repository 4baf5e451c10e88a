"""What the speed benchmarks share: CPU placement, the C yardsticks, process hygiene.

Each benchmark pins the side it measures to one CPU and the other side to
another, runs fresh processes, and kills every process group it started.
Processes are started and stopped through muxbench/procs.py, as the harness's
are: each in a session of its own, each killed by the kernel if the script
itself is killed.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

from scipy.stats import quantile_test

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 15.0  # seconds a server has to say where it listens
FLOOR = ROOT / "benchmarks" / "floor"  # the smallest Python programs doing the C ones' syscalls
sys.path.insert(0, str(ROOT))

from loadgen.integrity import ECHO_MIN_SIZE  # noqa: E402
from loadgen.native import echo_client_command  # noqa: E402
from muxbench import procs  # noqa: E402
from muxbench.argtypes import number_in  # noqa: E402
from servers.reference import reference_server_command  # noqa: E402

T = TypeVar("T")
R = TypeVar("R")


def run_main(name: str, main: Callable[[], int]) -> None:
    """Exit with main()'s status; a measurement that fails is one line and status 2.

    A server that does not start, a client that reports errors or times out:
    the script stops there (its finally blocks have killed what it started)
    and says why, rather than printing a traceback.
    """
    try:
        status = main()
    except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:  # Ctrl-C: the finally blocks have stopped what was started
        print(f"{name}: interrupted", file=sys.stderr)
        status = 130
    finally:
        procs.kill_all()  # a process whose start a Ctrl-C interrupted has no finally of its own
    sys.exit(status)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """What every speed script takes: how many interleaved rounds, how long, what load."""
    parser.add_argument("--pairs", type=number_in(int, 1), default=30,
                        help="interleaved rounds (default 30; more narrow the median's "
                             "95 %% interval)")
    parser.add_argument("--duration", type=number_in(float, 0.1, 3600), default=1.0,
                        help="seconds per client run (default 1)")
    parser.add_argument("--conns", type=number_in(int, 1, 10000), default=50,
                        help="connections (default 50)")
    # At least a muxbench load echo header; the C client needs 8 bytes.
    parser.add_argument("--size", type=number_in(int, ECHO_MIN_SIZE, 65536), default=64,
                        help="message size in bytes (default 64)")


def interleaved(contestants: dict[str, T], rounds: int,
                measure: Callable[[T], R]) -> Iterator[dict[str, R]]:
    """Measure every contestant once per round, the order reversed every other round.

    Drift on a shared machine (another tenant, a frequency change) then hits
    each contestant alike, and a ratio taken within one round cancels it.
    """
    names = list(contestants)
    for round_ in range(rounds):
        order = names if round_ % 2 == 0 else names[::-1]
        yield {name: measure(contestants[name]) for name in order}


def ratios(rounds: list[dict[str, R]], top: str, bottom: str,
           value: Callable[[R], float]) -> list[float]:
    """value(top) / value(bottom) within each round: the only ratios drift cannot bias."""
    return [value(got[top]) / value(got[bottom]) for got in rounds]


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free interval for the median the rounds estimate, or None.

    The order-statistic interval (scipy's quantile_test): it assumes only that
    rounds are independent draws, which interleaving is there to make them,
    not that ratios are normal -- on a shared machine their tails are long.
    Fewer than six rounds cannot give 95 %: None.
    """
    interval = quantile_test(values, q=0).confidence_interval(confidence)
    if math.isnan(interval.low):
        return None
    return float(interval.low), float(interval.high)


def spread(values: list[float], target: float, better: Literal["below", "above"]) -> str:
    """How far one run's median can be trusted against the target, in words.

    `better` is "below" or "above": which side of the target meets it.
    """
    interval = median_interval(values)
    if interval is None:
        return (f"min {min(values):.3g}, max {max(values):.3g}; too few rounds for a 95 % "
                f"interval of the median")
    low, high = interval
    if low <= target <= high:
        side = "it straddles the target: this run cannot tell"
    else:
        meets = high < target if better == "below" else low > target
        side = "all of it " + ("meets" if meets else "misses") + " the target"
    return (f"95 % interval of the median {low:.3g}-{high:.3g}, {side}; "
            f"min {min(values):.3g}, max {max(values):.3g}")


def placement_and_tools(name: str) -> tuple[int, int, list[str], list[str]]:
    """(first CPU, second CPU, C server argv, C client argv), or exit with a clear line."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit(f"{name}: needs two CPUs (server on one, client on another)")
    server, client = reference_server_command(), echo_client_command()
    if server is None or client is None:
        print(f"{name}: no C compiler (gcc/cc) found; cannot build the C yardsticks",
              file=sys.stderr)
        sys.exit(1)
    return cpus[0], cpus[1], server, client


def start_server(cmd: list[str], cpu: int) -> tuple[subprocess.Popen, int]:
    """Start a server pinned to `cpu` in its own process group; (process, port).

    In a session of its own the terminal's Ctrl-C never reaches the server:
    stopping it is ours alone.  A Ctrl-C that lands before `try` leaves it to
    run_main(), whose kill_all() finds it registered (muxbench/procs.py).
    """
    proc = procs.spawn([*cmd, "--port", "0"], cpus=[cpu], stdout=subprocess.PIPE, text=True)
    try:
        line = procs.read_ready_line(proc, READY_TIMEOUT)
        if not line or "listening on " not in line:
            raise RuntimeError(f"server {cmd[0]} did not start: {line!r}")
        return proc, int(line.rsplit(":", 1)[1])
    except BaseException:
        procs.kill_group(proc)
        raise


def run_c_client(cmd: list[str], port: int, args, cpu: int, warmup: float) -> dict[str, float]:
    """One run of the C echo client; its summary line as a dict (roundtrips, rate, ...)."""
    out = procs.run(
        [*cmd, "--port", str(port), "--conns", str(args.conns), "--size", str(args.size),
         "--duration", str(args.duration), "--warmup", str(warmup)],
        cpus=[cpu], timeout=args.duration + 30, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    out.check_returncode()
    fields = out.stdout.split()
    return {key: float(value) for key, value in zip(fields[::2], fields[1::2], strict=True)}
