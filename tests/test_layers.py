"""The layer rule of docs/architecture.md, enforced on the import graph of ``reasoning_embed`` (parsed, not
executed: imports inside functions count too). A lower layer never imports a higher one, and the packages
import each other without cycles."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "reasoning_embed"

# lowest first; a unit may import units of its own layer or of a lower one (docs/architecture.md)
LAYERS = [
    {"reasoning_embed", "errors", "utils"},
    {"models", "data", "retrieval"},
    {"mining", "foundry"},
    {"assets"},
    {"hrsa", "evaluation", "training", "report"},
    {"entry points"},
]
ENTRY_POINTS = {"train", "evaluate", "mine", "filter", "convert", "realign"}


def unit(module: str) -> str:
    """The layer unit of a dotted module name: its top-level subpackage or module; ``python -m`` modules
    (``reasoning_embed.train``, ``hrsa/__main__.py``, ...) are entry points."""
    parts = module.split(".")
    if len(parts) == 1:
        return "reasoning_embed"
    if parts[-1] == "__main__" or (len(parts) == 2 and parts[1] in ENTRY_POINTS):
        return "entry points"
    return parts[1]


def layer_of(u: str) -> int:
    for i, layer in enumerate(LAYERS):
        if u in layer:
            return i
    raise AssertionError(f"unit {u!r} has no layer: add it to docs/architecture.md and LAYERS")


def import_graph(root: Path = PACKAGE) -> dict[tuple[str, str], list[str]]:
    """{(importer module, imported module): [file:line, ...]} for every reasoning_embed import."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = module if f.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    names = [".".join(base + ([node.module] if node.module else []))]
                elif node.module:
                    names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "reasoning_embed" or name.startswith("reasoning_embed."):
                    edges[(module, name)].append(f"{f.relative_to(root.parent)}:{node.lineno}")
    return edges


def unit_graph(edges) -> dict[str, set[str]]:
    g: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        if unit(a) != unit(b):
            g[unit(a)].add(unit(b))
    return g


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_runs_up_the_layers():
    edges = import_graph()
    wrong = sorted(f"{unit(a)} (layer {layer_of(unit(a))}) imports {b} (layer {layer_of(unit(b))}) at {', '.join(where)}"
                   for (a, b), where in edges.items() if layer_of(unit(b)) > layer_of(unit(a)))
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_packages():
    cycle = find_cycle(unit_graph(import_graph()))
    assert cycle is None, " -> ".join(cycle)


def test_models_and_data_build_nothing_above_them():
    """The two hidden cycles this rule removed: models/backbone.py importing foundry (training on first use)
    and data/datamodule.py importing mining (mining on first use)."""
    bad = {(a, b) for a, b in import_graph() if unit(a) in ("models", "data") and unit(b) in ("foundry", "mining", "assets")}
    assert not bad


@pytest.mark.parametrize("edges, expect", [
    ({("reasoning_embed.models.backbone", "reasoning_embed.foundry.build"): ["x:1"]}, "up"),
    ({("reasoning_embed.hrsa.a", "reasoning_embed.report.b"): ["x:1"],
      ("reasoning_embed.report.b", "reasoning_embed.hrsa.a"): ["x:2"]}, "cycle"),
])
def test_the_checks_catch_what_they_are_for(edges, expect):
    ups = [e for e in edges if layer_of(unit(e[1])) > layer_of(unit(e[0]))]
    cycle = find_cycle(unit_graph(edges))
    assert (bool(ups), cycle is not None) == ((expect == "up"), (expect == "cycle"))
