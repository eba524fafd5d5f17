"""Where expensive test images are kept between runs, and the lock that guards building them.

The cache directory is ``$FUSESNAP_TEST_CACHE`` if set, else
``/var/cache/fusesnap-test`` when it can be created (root), else
``~/.cache/fusesnap-test``. Entries are written under a temporary name and
renamed when complete, so an interrupted build leaves nothing that looks done.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cache_dir", "locked"]

SYSTEM_CACHE = Path("/var/cache/fusesnap-test")


def cache_dir() -> Path:
    """The cache directory (created if missing)."""
    env = os.environ.get("FUSESNAP_TEST_CACHE")
    candidates = [Path(env)] if env else [SYSTEM_CACHE, Path.home() / ".cache/fusesnap-test"]
    for candidate in candidates:
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise RuntimeError(f"no writable test-image cache among {candidates}")


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive `fcntl.flock` on ``lock_path`` (created if missing).

    Concurrency: serialises builders in different processes; the second one
    blocks until the first is done and then finds the finished entry.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
