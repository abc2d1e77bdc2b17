"""House rules that hold the package together (STYLE.md rule 1, DESIGN section 2)."""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = {"dydis": ("dydis.stages", "dydis.cli"), "stages": ("dydis.cli",), "cli": ()}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (the house style imports absolutely)"
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_point_down(folder):
    for path in (REPO / folder).rglob("*.py"):
        for module in imported_modules(path):
            for banned in FORBIDDEN[folder]:
                assert not module.startswith(banned), f"{path.relative_to(REPO)} imports {module}"


def test_setup_cfg_installs_every_package():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    roots = {"dydis": REPO / "dydis", "dydis.cli": REPO / "cli", "dydis.stages": REPO / "stages"}
    found = set()
    for prefix, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((prefix, *parts)))
    assert found <= listed, f"packages missing from setup.cfg: {sorted(found - listed)}"
