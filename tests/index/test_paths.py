"""`is_normal_path` is `normalize_path`'s verdict on a path already in normal form."""

from __future__ import annotations

import itertools

from fusesnap.index.model import is_normal_path, normalize_path


def _normal(path: str) -> bool:
    try:
        return normalize_path(path) == path != ""
    except ValueError:
        return False


def test_is_normal_path_agrees_with_normalize_path() -> None:
    parts = ["a", "bc", ".", "..", "", "\0", "...", ".a"]
    paths = ["/".join(p) for n in range(5) for p in itertools.product(parts, repeat=n)]
    assert len(paths) > 4000
    for path in paths:
        assert is_normal_path(path) == _normal(path), repr(path)
    assert is_normal_path("usr/lib/x")
    assert not is_normal_path("usr//lib")
    assert not is_normal_path("usr/../etc")
