"""Each worker's clock against the orchestrator's, and the common window every host keeps.

The offset of a worker's clock is read through Dask itself: the orchestrator
notes its clock (t0), asks the worker for its own (remote), and notes its clock
again (t1); the remote reading was taken somewhere in between, so it is taken
at the midpoint, offset = remote - (t0 + t1) / 2, within half the round trip.
Of several round trips the shortest is kept (the least queueing, the tightest
bound), and its half round trip is recorded beside the offset as its error.
On namespaces of one machine every host reads the same kernel clock, and the
offsets measure only that error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

ROUNDS = 5
# A host's window may miss the common one by this much (or this share of the
# window, if larger) before the point is invalid: generous enough for the
# scheduling jitter of a busy machine, tight against a host that opened late
# because it had not finished connecting.
MARGIN_S = 0.05
MARGIN_SHARE = 0.02


@dataclass(frozen=True)
class Offset:
    offset_ns: int  # the worker's clock minus the orchestrator's
    error_ns: int   # half the shortest round trip: the offset's bound

    def as_dict(self) -> dict:
        return {"offset_ns": self.offset_ns, "error_ns": self.error_ns}


def measure(client, address: str, rounds: int = ROUNDS) -> Offset:
    """The clock offset of the worker at `address`, by `rounds` round trips."""
    best: tuple[int, int] | None = None
    for _ in range(rounds):
        t0 = time.time_ns()
        remote = client.run(time.time_ns, workers=[address])[address]
        t1 = time.time_ns()
        rtt = t1 - t0
        if best is None or rtt < best[0]:
            best = (rtt, remote - (t0 + t1) // 2)
    return Offset(offset_ns=best[1], error_ns=best[0] // 2)


def margin_ns(duration_s: float) -> int:
    return int(max(MARGIN_S, MARGIN_SHARE * duration_s) * 1e9)


def missed(host: str, window: dict | None, start_ns: int, end_ns: int, offset: Offset,
           margin: int) -> str | None:
    """Why a host's window (its own clock, as `muxbench load` records it) does not
    match the common one [start_ns, end_ns) (the orchestrator's clock); None if it does."""
    if not window or window.get("start_ns") is None:
        return f"generator host {host} recorded no window"
    start = window["start_ns"] - offset.offset_ns
    end = window["end_ns"] - offset.offset_ns
    late, early_end = start - start_ns, end_ns - end
    if abs(late) > margin or abs(early_end) > margin:
        return (f"generator host {host} missed the common window by "
                f"{max(abs(late), abs(early_end)) / 1e6:.1f} ms at its "
                f"{'start' if abs(late) >= abs(early_end) else 'end'} "
                f"(margin {margin / 1e6:.0f} ms)")
    return None
