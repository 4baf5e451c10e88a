"""The lines a `muxbench load --json` run writes to stderr as its load passes each mark.

The harness reads them to time its measurements (bench/run/trial.py): the
memory reading when the load begins, the CPU snapshots at the window's edges.
"""

from __future__ import annotations

# Every connection is up and the load begins: the warm-up.
WARMUP_START = "muxbench load: warm-up start"
# The measurement window opens, and closes.
WINDOW_START = "muxbench load: window start"
WINDOW_END = "muxbench load: window end"
