"""The package boundaries of docs/architecture.md, checked on the source (STYLE.md, example 1).

Every package and top-level module of fusesnap has a row in `ALLOWED`: the fusesnap
units it may import. Third-party packages with a job of their own are confined to
the units in `THIRD_PARTY`. Another package is reached through its ``__init__``
only: its private modules (``_x.py``) and any name it does not re-export are off
limits.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "fusesnap"

# The modules every unit may use: errors, digests, references, OCI documents, and the
# small helpers beside them.
CORE = {
    "errors",
    "digest",
    "reference",
    "oci",
    "blocking",
    "termui",
    "process",
    "singleflight",
    "groups",
}

ALLOWED: dict[str, set[str]] = {
    "__init__": set(),
    "__main__": {"cli"},
    "errors": set(),
    "digest": {"errors"},
    "reference": {"errors", "digest"},
    "oci": {"errors", "digest"},
    "blocking": set(),
    "termui": set(),
    "process": set(),
    "singleflight": set(),
    "groups": set(),
    "index": CORE,
    "store": CORE,
    "registry": CORE | {"__init__"},  # the version, for User-Agent
    "fs": CORE | {"index"},
    "lazy": CORE | {"index", "store"},
    "fuse": CORE | {"index", "fs"},
    "image": CORE | {"index", "fs", "store"},
    "pull": CORE | {"index", "registry", "lazy", "store"},
    "snapshots": CORE | {"index", "image", "pull", "store"},
    "mountd": CORE | {"index", "fs", "fuse", "image", "lazy", "pull", "registry", "store"},
    "containers": CORE | {"image", "lazy", "mountd", "pull", "registry", "snapshots", "store"},
    "containerd": CORE | {"mountd", "pull", "registry", "store"},
    "cli": CORE
    | {"__init__", "containerd", "containers", "fs", "fuse", "image", "index", "lazy"}
    | {"mountd", "pull", "registry", "snapshots", "store"},
}

THIRD_PARTY = {
    "httpx": {"registry"},
    "pyfuse3": {"fuse"},
    "click": {"cli"},
    "lmdb": {"store"},
    "grpc": {"containerd"},
    "google": {"containerd"},  # protobuf
    "prometheus_client": {"containerd"},
    "flatbuffers": {"index"},  # SOCI zTOCs are FlatBuffers tables (index.ztoc, index.ztocwrite)
}
# Pure units: no event loop in them (callers run them through fusesnap.blocking).
NO_TRIO = {"index", "store", "fs", "image", "oci", "digest", "reference", "errors"}

MAX_LINES = 450


def _unit(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of each absolute import (names empty for ``import x``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
    return out


def _exports(package: str) -> set[str]:
    """What ``fusesnap/<package>/__init__.py`` lists in ``__all__``."""
    tree = ast.parse((PKG / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


FILES = sorted(PKG.rglob("*.py"))
PACKAGES = sorted(p.name for p in PKG.iterdir() if (p / "__init__.py").exists())


def test_every_unit_has_a_row() -> None:
    units = {_unit(f) for f in FILES}
    assert units == set(ALLOWED), (units - set(ALLOWED), set(ALLOWED) - units)


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_unit_imports_only_what_its_row_allows(unit: str) -> None:
    bad = []
    for f in (f for f in FILES if _unit(f) == unit):
        for module, _ in _imports(f):
            parts = module.split(".")
            if parts[0] == "fusesnap":
                other = parts[1] if len(parts) > 1 else "__init__"
                if other != unit and other not in ALLOWED[unit]:
                    bad.append(f"{f.relative_to(PKG)} imports {module}")
            elif parts[0] in THIRD_PARTY and unit not in THIRD_PARTY[parts[0]]:
                bad.append(f"{f.relative_to(PKG)} imports {module}")
            elif parts[0] == "trio" and unit in NO_TRIO:
                bad.append(f"{f.relative_to(PKG)} imports trio")
    assert not bad, "\n".join(bad)


def test_other_packages_are_reached_through_their_init() -> None:
    exports = {p: _exports(p) for p in PACKAGES}
    bad = []
    for f in FILES:
        unit = _unit(f)
        for module, names in _imports(f):
            parts = module.split(".")
            if parts[0] != "fusesnap" or len(parts) < 2 or parts[1] == unit:
                continue
            if parts[1] not in exports:
                continue  # a top-level module: all of it is public
            if len(parts) > 2:
                bad.append(f"{f.relative_to(PKG)} imports {module} (not via its __init__)")
                continue
            hidden = [n for n in names if n not in exports[parts[1]]]
            if hidden:
                bad.append(f"{f.relative_to(PKG)} imports {hidden} from {module} (not exported)")
    assert not bad, "\n".join(bad)


def test_nothing_but_the_entry_points_imports_the_cli() -> None:
    users = {
        str(f.relative_to(PKG))
        for f in FILES
        if _unit(f) != "cli"
        and any(m.split(".")[:2] == ["fusesnap", "cli"] for m, _ in _imports(f))
    }
    assert users <= {"__main__.py"}, users


def test_no_private_modules_cross_packages() -> None:
    bad = [
        f"{f.relative_to(PKG)} imports {module}"
        for f in FILES
        for module, _ in _imports(f)
        if module.startswith("fusesnap.")
        and any(p.startswith("_") and p != "__init__" for p in module.split("."))
        and module.split(".")[1] != _unit(f)
    ]
    assert not bad, bad


def test_modules_stay_small() -> None:
    big = [
        f"{f.relative_to(PKG)}: {n} lines"
        for f in FILES
        if (n := len(f.read_text().splitlines())) > MAX_LINES
    ]
    assert not big, big


def test_formatting_is_not_switched_off() -> None:
    """Modules are small by being split, not by lines squeezed past the formatter."""
    marks = ("fmt: " + "skip", "fmt: " + "off")
    hits = [
        f"{f.relative_to(PKG)}:{i}"
        for f in FILES
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if any(m in line for m in marks)
    ]
    assert not hits, hits


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The table is not vacuous: a module of fs importing the registry would be caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("from fusesnap.registry.client import RegistryClient\nimport httpx\n")
    imports = [m for m, _ in _imports(probe)]
    assert "fusesnap.registry.client" in imports
    assert "registry" not in ALLOWED["fs"]
    assert "fs" not in THIRD_PARTY["httpx"]
