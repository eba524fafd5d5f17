"""``fusesnap commit NAME NEWREF``: a container's changes as a new image."""

from __future__ import annotations

from pathlib import Path

from fusesnap.containers import container
from fusesnap.errors import NotFoundError
from fusesnap.snapshots import CommitResult, SnapshotError, Snapshotter, commit_upper
from fusesnap.store import ACTIVE, open_store

__all__ = ["commit_container"]


def commit_container(root: Path, name: str, new_ref: str) -> CommitResult:
    """Commit container ``name``'s changes (its active snapshot's upper dir) as image
    ``new_ref``. The container may run on; what it writes meanwhile may or may not be in."""
    record = container.ContainerRecord.load(container.container_dir(root, name))
    if record is None:
        raise NotFoundError(f"container {name}: not found")
    with open_store(root) as store:
        snapshots = Snapshotter(store, root)
        if snapshots.stat(record.snapshot).kind != ACTIVE:
            raise SnapshotError(f"container {name}: read-only, it has no changes to commit")
        upper = snapshots.upper_dir(record.snapshot)
        return commit_upper(store, root, upper, record.image, new_ref, comment=f"container {name}")
