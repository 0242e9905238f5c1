"""The public API is what docs/api.md documents: no more, no less, and all of it importable."""

from __future__ import annotations

import importlib
import re

import bullwait

from helpers.common import ROOT

API_DOC = ROOT / "docs" / "api.md"
ENTRY = re.compile(r"^- `([A-Za-z_][A-Za-z0-9_]*)`: (\S.*)$")


def documented() -> dict[str, str]:
    """Name -> description from the list items of the "Public names" section."""
    section = API_DOC.read_text().split("\n## Public names\n", 1)[1].split("\n## ", 1)[0]
    names: dict[str, str] = {}
    for line in section.splitlines():
        if line.startswith("- "):
            match = ENTRY.match(line)
            assert match, f"docs/api.md: write public names as '- `Name`: what it is', not {line!r}"
            assert match.group(1) not in names, f"{match.group(1)} is documented twice"
            names[match.group(1)] = match.group(2)
    return names


def test_all_is_exactly_the_documented_names() -> None:
    names = documented()
    assert len(bullwait.__all__) == len(set(bullwait.__all__)), "a name listed twice in __all__"
    assert set(bullwait.__all__) == set(names), (
        f"undocumented: {sorted(set(bullwait.__all__) - set(names))}; "
        f"documented but not exported: {sorted(set(names) - set(bullwait.__all__))}"
    )


def test_every_public_name_imports() -> None:
    module = importlib.import_module("bullwait")
    for name in bullwait.__all__:
        assert getattr(module, name, None) is not None, f"bullwait.{name} is in __all__ but missing"
    namespace: dict[str, object] = {}
    exec("from bullwait import *", namespace)
    assert set(bullwait.__all__) <= set(namespace)


def test_worker_is_the_bullwait_worker_under_its_public_name() -> None:
    from bullmq import Worker as StockWorker

    from bullwait.engine.worker import BullwaitWorker

    assert bullwait.Worker is BullwaitWorker and issubclass(bullwait.Worker, StockWorker)


def test_public_names_are_not_the_private_ones() -> None:
    assert not [name for name in bullwait.__all__ if name.startswith("_")]
    assert bullwait.__version__
