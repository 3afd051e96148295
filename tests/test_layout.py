"""The package's layering: imports run one way (clip -> engine -> methods -> cli), no cycles,
and arguments are parsed only in the application (``anomaly_clip/cli``).

Every import statement counts, including those inside functions and ``TYPE_CHECKING`` blocks,
so a cycle cannot hide behind a deferred import.
"""
import ast
from functools import lru_cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anomaly_clip"
LAYERS = {"clip": 0, "data": 0, "metrics": 0, "engine": 1, "methods": 2, "cli": 3}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set) -> set:
    """Modules of the package imported anywhere in ``path`` (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in known and target != name)
    return found


@lru_cache(maxsize=1)
def import_graph() -> dict:
    known = modules()
    return {name: imports_of(name, path, set(known)) for name, path in known.items()}


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def layer(name: str):
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "anomaly_clip.clip.blocks" in graph["anomaly_clip.clip.backbone"]
    assert "anomaly_clip.engine.registry" in graph["anomaly_clip.engine.checkpoint"]


def test_cycle_finder_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_imports_run_one_way(name):
    graph = import_graph()
    own = layer(name)
    if own is None:
        return
    upward = [target for target in graph[name] if (layer(target) or 0) > own]
    assert upward == [], f"{name} (layer {own}) imports higher layers: {upward}"


PARSERS = ("argparse", "jsonargparse")


def parser_imports(package: Path) -> list:
    """Files of ``package`` outside its ``cli/`` folder that import an argument parser anywhere."""
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(name.split(".")[0] in PARSERS for name in names):
                offenders.append(str(path.relative_to(package)))
                break
    return offenders


def test_arguments_are_parsed_only_in_cli():
    assert parser_imports(PACKAGE) == []


def test_a_planted_parser_import_outside_cli_is_found(tmp_path):
    package = tmp_path / "anomaly_clip"
    (package / "cli").mkdir(parents=True)
    (package / "engine").mkdir()
    (package / "cli" / "main.py").write_text("import argparse\n")
    (package / "engine" / "flags.py").write_text("def f():\n    from jsonargparse import ArgumentParser\n")
    (package / "engine" / "clean.py").write_text("import os\n")
    assert parser_imports(package) == ["engine/flags.py"]
