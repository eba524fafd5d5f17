"""Snapshots on the filesystem: the directories behind the store's snapshot records.

`Snapshotter` (module `snapshotter`) prepares active snapshots (an overlay upper
and work dir per container) and views over an image's chain IDs, and removes
them; `commit` turns an upper dir into a layer (`difftar`: the OCI diff tar with
whiteouts) and a new image.
"""

from fusesnap.snapshots.commit import CommitResult, commit_upper
from fusesnap.snapshots.snapshotter import SnapshotError, Snapshotter

__all__ = [
    "CommitResult",
    "SnapshotError",
    "Snapshotter",
    "commit_upper",
]
