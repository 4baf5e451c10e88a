"""What every layer of muxbench shares (servers, load generator, harness, benchmarks).

The leaf modules here import nothing of the layers; muxbench/cli.py, the
`muxbench` command, is the one module that reaches all of them.
"""

from pathlib import Path

# The source tree (servers/, loadgen/, bench/, muxbench/): where the harness starts
# its `python -m` processes, and whose git commit a run records.
ROOT = Path(__file__).resolve().parent.parent
