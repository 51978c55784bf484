"""Every benchmark still loads, and every project name it uses still exists.

The benchmarks are run by hand (their figures are in the README), so a renamed function would only show when someone
next runs one. This loads each script as a module (its top-level imports run; ``main`` does not) and checks the
names its function-level ``from reasoning_embed... import`` lines and ``module.attribute`` uses refer to.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys

import pytest

from conftest import ROOT

BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def project_names(tree: ast.Module) -> list[tuple[int, str, str, bool]]:
    """(line, module, name, imported) for every ``from reasoning_embed.x import name`` (imported=True) and every
    ``alias.attr`` where ``alias`` was bound by such a line or by ``import _common`` (imported=False)."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "reasoning_embed":
            for alias in node.names:
                found.append((node.lineno, node.module, alias.name, True))
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "_common" or alias.name.split(".")[0] == "reasoning_embed":
                    aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            found.append((node.lineno, aliases[node.value.id], node.attr, False))
    return found


def is_module(dotted: str) -> bool:
    try:
        importlib.import_module(dotted)
        return True
    except ModuleNotFoundError:
        return False


def resolves(module: str, name: str, imported: bool) -> bool:
    """``module.name`` exists: an attribute of ``module`` or a submodule its package has not imported yet. An
    attribute of something that is not a module (``from x import TABLE`` then ``TABLE.items``) is not checked:
    the import line of ``TABLE`` is."""
    if not is_module(module):
        return not imported
    return hasattr(importlib.import_module(module), name) or is_module(f"{module}.{name}")


@pytest.fixture(autouse=True)
def benchmarks_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_the_benchmarks_are_found():
    assert {"bench_lexical_ceiling.py", "gpu_acceptance.py", "fsdp_check.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_a_benchmark_loads_and_its_project_names_exist(script, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"_bench_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)  # top-level code: imports, constants, argument defaults
    missing = [f"{script.name}:{line}: {mod}.{name}" for line, mod, name, imported
               in project_names(ast.parse(script.read_text())) if not resolves(mod, name, imported)]
    assert not missing, "names the benchmark uses that the project no longer has:\n" + "\n".join(missing)


def test_a_renamed_function_is_reported(tmp_path):
    """The check itself can fail: a script that imports a name the project lacks, or uses a missing attribute."""
    tree = ast.parse("def main():\n    from reasoning_embed.retrieval import no_such_search\n"
                     "    from reasoning_embed.no_such_module import search\n"
                     "    from reasoning_embed.training import grad_cache\n    grad_cache.no_such_split(1)\n"
                     "    from reasoning_embed.training.throughput import PEAK_BF16_FLOPS\n    PEAK_BF16_FLOPS.items()\n")
    missing = [(mod, name) for _, mod, name, imported in project_names(tree) if not resolves(mod, name, imported)]
    assert missing == [("reasoning_embed.retrieval", "no_such_search"), ("reasoning_embed.no_such_module", "search"),
                       ("reasoning_embed.training.grad_cache", "no_such_split")]
