"""The `muxbench` command: one entry point, a sub-command per layer.

Each sub-command lives next to the code it drives and is imported only when it
is asked for, so `muxbench serve` does not pay for matplotlib and a broken
report module cannot stop a server from starting.  A sub-command module exposes
`configure(parser)` and `run(args) -> int` (exit status).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("servers.cli_models", "list the server models and whether each is available"),
    "serve": ("servers.cli_serve", "run one server model until SIGTERM or SIGINT"),
    "load": ("loadgen.cli", "drive a server with N clients and report latency and integrity"),
    "chat": ("loadgen.chat_client", "interactive chat client"),
    "bench": ("bench.cluster.suite", "run a benchmark suite and store results.json"),
    "report": ("bench.report.build", "write REPORT.md and plots from a results run"),
    "compare": ("bench.gate.compare", "compare two runs; exit 1 when NEW regressed against BASE"),
    "regress": ("bench.gate.regress", "judge the working tree against a git revision, run here"),
    "check": ("bench.gate.invariants", "check a stored run against what must hold on any machine"),
    "cluster": ("bench.cluster.cli", "hosts made of network namespaces, with a Dask worker each"),
}


def _version() -> str:
    try:
        return importlib.metadata.version("muxbench")
    except importlib.metadata.PackageNotFoundError:  # run from a tree never installed
        return "(not installed)"


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="muxbench",
        description="Benchmark of the ways one Linux process can serve many TCP clients.",
        epilog="Run `muxbench COMMAND --help` for the options of one command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"muxbench {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        # Unknown or missing command: let argparse print usage and the list.
        _top_parser().parse_args(argv)
        return 2
    name = argv[0]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"muxbench {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(argv[1:])
    try:
        return module.run(args)
    except KeyboardInterrupt:
        print(f"muxbench {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
