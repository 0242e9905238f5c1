"""The package's layers, as its folders show them, hold in its imports.

Each layer may import the layers before it and never one after it: settings, errors and logs
at the top; the engine over bullmq, which knows nothing of the waitlist; the waitlist domain;
operations; monitoring; the runtime that runs the workers; developer conveniences; the CLI,
which nothing in the library imports. `bullwait/__init__.py` is the public surface and may
re-export from any layer but the CLI.
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.common import ROOT

ORDER = ["base", "engine", "waitlist", "ops", "monitoring", "runtime", "dev", "cli"]
PACKAGE = ROOT / "bullwait"


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else "base"


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imported(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "bullwait" or name.startswith("bullwait.")}


def test_every_module_belongs_to_a_known_layer() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders <= set(ORDER), f"new subpackage {sorted(folders - set(ORDER))}: give it a place in ORDER"


def test_no_layer_imports_a_later_one() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if module == "bullwait":
            continue
        own = ORDER.index(layer_of(module))
        for target in imported(path):
            if target != "bullwait" and ORDER.index(layer_of(target)) > own:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_public_surface_never_imports_the_cli() -> None:
    assert not any(layer_of(t) == "cli" for t in imported(PACKAGE / "__init__.py"))
