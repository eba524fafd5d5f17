"""The snapshotter over a real store: chain IDs, prepare/view/commit/remove, cache rule,
and the upper dir as an OCI layer tar."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError
from fusesnap.oci import chain_ids
from fusesnap.snapshots import SnapshotError, Snapshotter
from fusesnap.snapshots.difftar import write_diff_tar
from fusesnap.store import (
    COMMITTED,
    ContainerRef,
    SnapshotInUseError,
    SnapshotRecord,
    Store,
    open_store,
)

D0 = Digest.of(b"layer 0")
D1 = Digest.of(b"layer 1")
D2 = Digest.of(b"layer 2")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with open_store(tmp_path / "root") as s:
        yield s


def test_chain_ids_follow_the_oci_rule() -> None:
    c1 = "sha256:" + hashlib.sha256(f"{D0} {D1}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {D2}".encode()).hexdigest()
    assert chain_ids([D0, D1, D2]) == [str(D0), c1, c2]
    assert chain_ids([]) == []


def _base(store: Store) -> str:
    chains = chain_ids([D0])
    store.snapshots.create(
        SnapshotRecord(chains[0], COMMITTED, layer=Digest.of(b"blob 0"), diff_id=D0)
    )
    return chains[0]


def test_prepare_view_commit_remove(store: Store, tmp_path: Path) -> None:
    snapshots = Snapshotter(store, tmp_path / "root")
    base = _base(store)
    active = snapshots.prepare("containers/a", base, labels={"fusesnap.container": "a"})
    upper = snapshots.upper_dir("containers/a")
    assert upper.is_dir()
    assert not any(upper.iterdir())
    lower = tmp_path / "lower"
    options = snapshots.overlay_options("containers/a", lower)
    assert options.startswith(f"lowerdir={lower},upperdir={upper},workdir=")
    with pytest.raises(AlreadyExistsError):
        snapshots.prepare("containers/a", base)

    snapshots.view("containers/v", base)
    view_options = snapshots.overlay_options("containers/v", lower)
    assert view_options.startswith(f"lowerdir={lower}:")
    assert "upperdir" not in view_options
    with pytest.raises(SnapshotError, match="is view, has no upper dir"):
        snapshots.upper_dir("containers/v")
    with pytest.raises(SnapshotError, match="committed snapshots are mounted as their image"):
        snapshots.overlay_options(base, lower)

    top = chain_ids([D0, D1])[1]
    stored = snapshots.commit(top, "containers/a", layer=Digest.of(b"blob 1"), diff_id=D1)
    assert (stored.kind, stored.parent, stored.labels) == (COMMITTED, base, active.labels)
    assert not upper.exists()
    with pytest.raises(SnapshotInUseError, match="parent of"):
        snapshots.remove(base)
    store.containers.put(ContainerRef("v", "img", Digest.of(b"m"), "containers/v"))
    with pytest.raises(SnapshotInUseError, match="in use by container v"):
        snapshots.remove("containers/v")
    store.containers.delete("v")
    for key in ("containers/v", top, base):
        snapshots.remove(key)
    assert snapshots.list() == []


def test_cache_rule_needs_the_whole_chain(store: Store, tmp_path: Path) -> None:
    snapshots = Snapshotter(store, tmp_path / "root")
    assert not snapshots.is_cached([D0, D1], complete=False)
    base = _base(store)
    assert snapshots.is_cached([D0], complete=False)
    assert not snapshots.is_cached([D0, D1], complete=False)
    store.snapshots.create(
        SnapshotRecord(chain_ids([D0, D1])[1], COMMITTED, parent=base, layer=D1, diff_id=D1)
    )
    assert snapshots.is_cached([D0, D1], complete=False)
    assert not snapshots.is_cached([D0, D1])  # the layers are not in the store


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts and trusted.* xattrs need root")
def test_upper_dir_becomes_an_oci_layer_tar(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "new.conf").write_text("x=1\n")
    os.link(upper / "etc" / "new.conf", upper / "etc" / "same.conf")
    os.mknod(upper / "etc" / "gone", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (upper / "data").mkdir()
    os.setxattr(upper / "data", "trusted.overlay.opaque", b"y")
    (upper / "data" / "c").write_bytes(b"c")
    os.symlink("new.conf", upper / "etc" / "link")
    out = io.BytesIO()
    diff_id, size = write_diff_tar(upper, out)
    data = out.getvalue()
    assert diff_id == Digest.of(data)
    assert size == len(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == [
            "data", "data/.wh..wh..opq", "data/c", "etc", "etc/.wh.gone", "etc/link",
            "etc/new.conf", "etc/same.conf",
        ]  # fmt: skip
        assert members["etc/.wh.gone"].isreg()
        assert members["etc/.wh.gone"].size == 0
        assert members["etc/same.conf"].islnk()
        assert members["etc/same.conf"].linkname == "etc/new.conf"
        assert members["etc/link"].issym()
        assert members["etc/link"].linkname == "new.conf"
        assert members["etc/new.conf"].uname == ""
        extracted = tar.extractfile("etc/new.conf")
        assert extracted is not None
        assert extracted.read() == b"x=1\n"
