"""The package boundaries from DESIGN.md, checked on the source (STYLE.md, example 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "fusesnap"

FORBIDDEN = {
    "store": {
        "trio",
        "httpx",
        "pyfuse3",
        "fusesnap.lazy",
        "fusesnap.fs",
        "click",
    },
    "lazy": {"pyfuse3", "click", "fusesnap.fs"},
    "fs": {"httpx", "click"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_boundaries(package: str) -> None:
    files = sorted((PKG / package).rglob("*.py"))
    assert files, f"fusesnap/{package} has no modules"
    bad = []
    for f in files:
        for name in _imports(f):
            for banned in FORBIDDEN[package]:
                if name == banned or name.startswith(banned + "."):
                    bad.append(f"{f.relative_to(PKG)} imports {name}")
    assert not bad, "\n".join(bad)


def test_modules_stay_small() -> None:
    big = [
        f"{f.relative_to(PKG)}: {n} lines"
        for f in PKG.rglob("*.py")
        if (n := len(f.read_text().splitlines())) > 500
    ]
    assert not big, big
