"""The package's folders import in one direction only, and no module imports itself back through others.

Layers, lowest first (README, "Architecture"): a module may import its own layer and the layers below it, never
one above. Every import counts, function-local ones too (they are still a dependency, only a later one).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mirrorspec"
# `mirrorspec/` itself holds the shared leaf types (errors, params, methods) that every layer may import.
LAYERS = (PACKAGE, "protos", "workers", "orchestration", "speculation", "serving", "cluster", "training", "bench",
          "cli")
DATA_PACKAGES = ("drafters",)  # installed for their files (the shipped models); no code, so no layer


def layer_of(module: str) -> str:
    """The layer of one of this package's modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else PACKAGE


def module_name(path: Path) -> str:
    folder = path.parent.name
    stem = "" if path.stem == "__init__" else f".{path.stem}"
    return f"{PACKAGE}{stem}" if folder == PACKAGE else f"{PACKAGE}.{folder}{stem}"


def imports(source: str, known: set[str], top_level_only: bool = False) -> set[str]:
    """The modules of `known` that a source file imports (`from a import b` is a.b when that is a module, else a)."""
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
    return found & known


def sources() -> dict[str, str]:
    files = [p for layer in LAYERS for p in sorted((ROOT / layer).glob("*.py"))]
    return {module_name(p): p.read_text(encoding="utf-8") for p in files}


def upward_imports(modules: dict[str, str]) -> list[str]:
    """'importer -> imported' for every import of a higher layer."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    bad = []
    for name, source in modules.items():
        own = rank[layer_of(name)]
        for imported in sorted(imports(source, set(modules))):
            if rank[layer_of(imported)] > own:
                bad.append(f"{name} -> {imported}")
    return bad


def import_cycles(modules: dict[str, str]) -> list[list[str]]:
    """Cycles among module-level imports, each once, starting at its first module in sorted order (a depth-first
    search finds at least one cycle whenever there is any)."""
    graph = {name: sorted(imports(src, set(modules), top_level_only=True) - {name})
             for name, src in modules.items()}
    cycles, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in path:
                cycle = path[path.index(nxt):]
                start = cycle.index(min(cycle))
                cycle = cycle[start:] + cycle[:start]  # the same cycle reads the same from wherever it was found
                if cycle not in cycles:
                    cycles.append(cycle)
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    for name in sorted(graph):
        visit(name, [name])
    return cycles


def test_every_folder_is_a_layer() -> None:
    """Each sub-package pyproject.toml installs is placed in LAYERS, and each layer is installed."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    package_dir = next(line for line in pyproject.splitlines() if line.startswith("package-dir"))
    folders = set(re.findall(rf'"{PACKAGE}\.(\w+)" = "\w+"', package_dir))
    assert folders == set(LAYERS[1:]) | set(DATA_PACKAGES)
    assert all([p.name for p in (ROOT / data).glob("*.py")] == ["__init__.py"] for data in DATA_PACKAGES)


def test_no_lower_layer_imports_a_higher_one() -> None:
    modules = sources()
    assert len(modules) > 50  # the walk found the package
    assert upward_imports(modules) == []


def test_no_import_cycle() -> None:
    assert import_cycles(sources()) == []


def test_the_checks_catch_a_violation() -> None:
    """The checks above can fail: an upward import and a cycle planted in copies of real modules are found."""
    modules = sources()
    planted = dict(modules)
    planted["mirrorspec.workers.kv_cache"] += "\n\ndef _late():\n    from mirrorspec.serving import metrics\n"
    assert upward_imports(planted) == ["mirrorspec.workers.kv_cache -> mirrorspec.serving.metrics"]
    planted = dict(modules)
    planted["mirrorspec.orchestration.draft_tree"] += "\nfrom mirrorspec.orchestration import acceptance\n"
    assert ["mirrorspec.orchestration.acceptance", "mirrorspec.orchestration.draft_tree"] in import_cycles(planted)
