from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fusesnap.store import Store, open_store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def store(root: Path) -> Iterator[Store]:
    with open_store(root) as s:
        yield s
