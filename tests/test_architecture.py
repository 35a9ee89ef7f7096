"""The layers of docs/architecture.md, enforced: no import cycle, torch only on the model side.

The import graph is read from the source (every ``import`` statement, function-level ones
included, except those under ``if TYPE_CHECKING:``), so a cycle hidden inside a function
body fails here before it becomes an ImportError at a distance.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("h2osim", "theory")
HEAVY = ("torch", "transformers")  # the model stack: only h2osim.model may import it
CORE = (  # numpy only: the trace format, the engine and everything it needs
    "h2osim.errors", "h2osim.files", "h2osim.trace", "h2osim.units", "h2osim.schedule",
    "h2osim.engine", "h2osim.metrics", "h2osim.oracles", "h2osim.scores", "h2osim.policies",
    "h2osim.synthetic", "h2osim.plots",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = [p for package in PACKAGES for p in (REPO / package).rglob("*.py")]
    return {module_name(path): path for path in files}


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:`` (typing only, never executed)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(child) for child in ast.walk(node)}
    return skipped


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, absolute names, function-level imports included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _type_checking_blocks(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def import_graph() -> nx.DiGraph:
    modules = project_modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target in imports_of(path, name):
            if target in modules and target != name:
                graph.add_edge(name, target)
            elif target.split(".")[0] in HEAVY:
                graph.add_edge(name, target.split(".")[0])
    return graph


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    project = graph.subgraph(project_modules())
    cycles = list(nx.simple_cycles(project))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles)


def test_the_graph_reader_sees_function_level_imports(tmp_path):
    """The cycle test is only as good as the reader: an import inside a function counts."""
    source = tmp_path / "h2osim_probe.py"
    source.write_text("def f():\n    from h2osim.engine import replay\n")
    assert "h2osim.engine" in imports_of(source, "h2osim_probe")
    guarded = tmp_path / "guarded.py"
    guarded.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import torch\n")
    assert "torch" not in imports_of(guarded, "guarded")


def test_only_the_model_side_imports_torch():
    graph = import_graph()
    importers = sorted(m for m in project_modules() if any(graph.has_edge(m, h) for h in HEAVY))
    outside = [m for m in importers if not m.startswith("h2osim.model")]
    assert importers, "the model side imports torch: the reader must see it"
    assert not outside, f"torch/transformers imported outside h2osim.model: {outside}"


@pytest.mark.parametrize("extra", [(), ("h2osim.replay", "h2osim.dump", "h2osim.live")])
def test_core_and_clis_load_without_torch(extra):
    """Importing the core (and the command lines) executes no torch import at all."""
    modules = [*CORE, *extra]
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "import h2osim.policies as p; p.policy_names()\n"  # every policy module
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=True, timeout=120)  # fmt: skip
    assert done.stdout.strip() == "[]"


def test_core_modules_exist():
    """The layer list above names real modules (a renamed module must update the test)."""
    modules = project_modules()
    assert set(CORE) <= set(modules)
