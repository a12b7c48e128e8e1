"""The package's import rules (docs/architecture.md): networks import nothing of the rest, data no
workflows or export, workflows no export. Read from the source (every import statement, at any depth)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bundle"

# part -> the parts of the package it may import (besides itself)
ALLOWED = {
    "networks": set(),
    "errors": {"networks"},  # looks up SwinWeightsError when it reports an error
    "files": set(),
    "data": {"errors", "files"},
    "workflows": {"data", "networks", "errors", "files"},
    "export": {"workflows", "data", "networks", "errors", "files"},
}


def part_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_part_imports_only_what_it_may(path):
    relative = path.relative_to(PACKAGE)
    part = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.stem != "__init__" else ""
    if not part:
        return
    assert part in ALLOWED, f"{relative}: a part that docs/architecture.md does not name"
    for module in imports(path):
        if module == "bundle" or module.startswith("bundle."):
            target = part_of(module)
            assert (
                target == part or target in ALLOWED[part]
            ), f"{relative} imports {module}: {part} may not import {target}"
