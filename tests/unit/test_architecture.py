"""The packages' one-way import order: config -> data -> model -> evaluation -> train -> audit -> bench -> cli.

A module may import its own layer and the layers before it, never one after it: a newcomer can
then read the packages in that order, and moving a feature never drags the training loop along.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trainer

ROOT = Path(trainer.__file__).parent
# Base modules anything may import: one-line errors, file writing, secrets, versions and progress.
BASE = ("errors", "files", "secrets", "runtime", "progress", "locks", "__init__")
LAYERS = ("config", "data", "model", "evaluation", "train", "audit", "bench", "cli", "__main__")


def layer_of(module: str) -> int:
    """-1 for the base modules, else the position of its top-level package in LAYERS."""
    top = module.split(".")[1] if module.count(".") else "__init__"
    return -1 if top in BASE else LAYERS.index(top)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> set[str]:
    """Every trainer module a file imports, also inside functions (lazy imports count)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("trainer"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("trainer"))
    return {n for n in names if _exists(n)}


def _exists(module: str) -> bool:
    path = ROOT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_every_module_imports_only_its_own_layer_and_the_ones_before_it():
    backwards = []
    for path in sorted(ROOT.rglob("*.py")):
        here = module_name(path)
        for target in imported(ast.parse(path.read_text(encoding="utf-8"))):
            if layer_of(target) > layer_of(here):
                backwards.append(f"{here} imports {target}")
    assert not backwards, (
        "imports against the order " + " -> ".join(LAYERS) + ":\n" + "\n".join(backwards)
    )


def test_every_package_is_in_the_order():
    tops = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    tops |= {p.stem for p in ROOT.glob("*.py")}
    assert tops <= set(LAYERS) | set(BASE), sorted(tops - set(LAYERS) - set(BASE))
