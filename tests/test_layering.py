"""The packages import downward only, so that the tree tells the truth about the design.

servers/ know nothing of the load generator or the harness, the load generator
nothing of the servers or the harness; in bench/, the report and the gate read
runs through bench/results.py alone, never the code that made them, and the
code that runs trials knows nothing of either; all of them share muxbench/'s
leaf modules, and only the `muxbench` command (muxbench/cli.py) reaches every
layer.  Imports are read from the source, function-level and TYPE_CHECKING
ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

LAYERS = ("servers", "loadgen", "bench", "muxbench")
SHARED = "muxbench"  # its leaf modules; muxbench.cli is nobody's to import
# The most specific prefix of a module decides what it may import.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "muxbench": ("muxbench",),
    "servers": ("servers", SHARED),
    "loadgen": ("loadgen", SHARED),
    "bench": ("bench", "servers", "loadgen", SHARED),
    # the hinge and the catalogue: what every part of bench/ reads, reading nothing of it
    "bench.results": (SHARED,),
    "bench.metrics": (SHARED,),
    "bench.sample": ("bench.sample", SHARED),
    "bench.run": ("bench.run", "bench.sample", "bench.results", "bench.metrics", "servers",
                  "loadgen", SHARED),
    "bench.report": ("bench.report", "bench.results", "bench.metrics", "servers", SHARED),
    "bench.gate": ("bench.gate", "bench.results", "bench.metrics", "servers", SHARED),
}
EVERYTHING = "muxbench.cli"  # the application shell: imports every layer, lazily


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported(tree: ast.AST, package: str) -> set[str]:
    """Every project module the source imports, by its full name."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if is_module(full) else base)
    return {name for name in found if name.split(".")[0] in LAYERS}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imports: set[str]) -> list[str]:
    if module == EVERYTHING:
        return []
    rule = max((p for p in MAY_IMPORT if _within(module, p)), key=len)
    allowed = MAY_IMPORT[rule]
    return sorted(f"{module} imports {name}" for name in imports
                  if _within(name, EVERYTHING)
                  or not any(_within(name, prefix) for prefix in allowed))


def sources() -> list[Path]:
    return [path for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))]


def test_every_layer_imports_only_downward():
    files = sources()
    assert len(files) > 60  # the tree was found
    found = []
    for path in files:
        module = module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        found += violations(module, imported(ast.parse(path.read_text(), str(path)), package))
    assert found == []


@pytest.mark.parametrize("module, source", [
    ("servers.net", "from loadgen.worker import RECV_SIZE"),
    ("servers.net", "import bench.results"),
    ("loadgen.engine", "def f():\n    from bench.results import metric"),
    ("bench.report.tables", "from bench.run.scenarios import SCENARIOS"),
    ("bench.gate.judge", "from bench.sample import environment"),
    ("muxbench.procs", "from servers import net"),
    ("bench.run.suite", "from muxbench import cli"),
    ("bench.run.trial", "from bench.report.measures import Run"),
    ("bench.results", "from bench.metrics import CPU"),
])
def test_the_layering_check_catches_an_upward_import(module, source):
    package = module.rpartition(".")[0]
    assert violations(module, imported(ast.parse(source), package)) != []


def test_the_layering_check_passes_downward_imports():
    source = ("from muxbench import procs\nfrom servers.models import MODELS\n"
              "from bench.results import metric\nfrom bench.run import scenarios\n")
    assert violations("bench.run.suite", imported(ast.parse(source), "bench.run")) == []
