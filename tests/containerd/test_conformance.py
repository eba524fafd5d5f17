"""containerd's snapshotter test suite (``snapshots/testsuite``) against ``fusesnap
snapshotter`` over its real unix socket, as containerd's proxy plugin calls it.

One daemon serves the module; each test works in a namespace of its own (the
``containerd-namespace`` metadata), so keys never meet. The mounts a call returns
are performed with mount(8) and their files checked, as the Go suite does with
``mount.All``: a test proves what a container would see, not what the options say.
Error codes are those containerd's ``errdefs`` maps back to its own errors.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from fusesnap.containerd import api
from fusesnap.containerd.snapshots import SNAPSHOTS
from tests.containerd.harness import (
    Daemon,
    Snapshotter,
    assert_read_only,
    code_of,
    mount_points_under,
    mounted,
    serving,
    snapshot_dirs,
    tree,
    write,
)

pytestmark = pytest.mark.e2e

MiB = 1 << 20

ACTIVE = api.KIND_ACTIVE
COMMITTED = api.KIND_COMMITTED
VIEW = api.KIND_VIEW
Info = api.message("Info")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One ``fusesnap snapshotter`` for the module (`serving`)."""
    if os.geteuid() != 0:
        pytest.skip("performing the snapshotter's mounts needs root")
    for tool in ("mount", "umount"):
        if shutil.which(tool) is None:
            pytest.skip(f"missing: {tool}")
    with serving(tmp_path_factory.mktemp("snapshotter")) as running:
        yield running


@pytest.fixture
def snapshotter(daemon: Daemon) -> Snapshotter:
    """A client in a namespace no other test uses."""
    return Snapshotter(daemon.stub, f"t-{secrets.token_hex(6)}")


@pytest.fixture(autouse=True)
def _nothing_left_mounted(tmp_path: Path) -> Iterator[None]:
    yield
    assert mount_points_under(tmp_path) == []


# -- a basic life: prepare, write, commit, view --------------------------------------------


def test_prepare_write_commit_then_view_shows_the_files(
    snapshotter: Snapshotter, tmp_path: Path
) -> None:
    mounts = snapshotter.prepare("preparing")
    assert [m.type for m in mounts] == ["bind"]
    assert "rw" in mounts[0].options
    with mounted(mounts, tmp_path / "preparing") as mnt:
        write(mnt / "foo", b"foo\n", 0o777)
        (mnt / "a" / "b" / "c").mkdir(parents=True)
        written = tree(mnt)
    snapshotter.commit("committed", "preparing")

    info = snapshotter.stat("committed")
    assert (info.name, info.parent, info.kind) == ("committed", "", COMMITTED)
    # The active key is gone once committed.
    assert code_of(lambda: snapshotter.stat("preparing")) == grpc.StatusCode.NOT_FOUND
    assert snapshotter.names() == ["committed"]

    with mounted(snapshotter.view("view", "committed"), tmp_path / "view") as mnt:
        assert tree(mnt) == written
        assert (mnt / "foo").read_bytes() == b"foo\n"
        assert_read_only(mnt)
    assert snapshotter.stat("view").kind == VIEW

    # containerd's own order of removal: the view, then what it stood on.
    snapshotter.remove("view")
    snapshotter.remove("committed")
    assert snapshotter.names() == []


# -- layers: containerd's checkSnapshots over chains of appliers ----------------------------

Applier = Callable[[Path], None]


def _l1_files(root: Path) -> None:
    write(root / "foo", b"foo\n", 0o777)
    write(root / "foobar", b"foobar\n", 0o777)
    write(root / "dir1" / "f1", b"Hello", 0o644)
    (root / "dir1").chmod(0o700)
    write(root / "dir2" / "f2", b"...", 0o644)
    write(root / "lib" / "libc.so", b"libc", 0o755)
    (root / "lib" / "libc.so.6").symlink_to("libc.so")


def _l2_changes(root: Path) -> None:
    (root / "foobar").unlink()  # a whiteout
    write(root / "foo", b"foo bar\n", 0o777)  # changed in place
    write(root / "bar", b"bar\n", 0o600)
    shutil.rmtree(root / "dir1")  # a directory of the lower layer, removed
    write(root / "dir3" / "f1", b"Hello", 0o644)
    os.link(root / "dir2" / "f2", root / "dir3" / "f2")  # moved out of a lower dir
    (root / "dir2" / "f2").unlink()
    os.chown(root / "lib" / "libc.so", 1000, 1000)
    (root / "lib").chmod(0o711)


def _l3_changes(root: Path) -> None:
    (root / "dir1").mkdir()  # back, empty: the lower one must stay hidden (opaque)
    write(root / "dir1" / "new", b"new", 0o644)
    (root / "bar").rename(root / "dir3" / "bar")
    (root / "lib" / "libc.so.6").unlink()
    (root / "lib" / "libc.so.6").symlink_to("/elsewhere")


def test_parent_chain_of_three_layers(snapshotter: Snapshotter, tmp_path: Path) -> None:
    """Each layer is prepared on the one before, changed through its mount and
    committed; every mount (and a view of the top) must show exactly the files a plain
    directory has after the same changes: whiteouts, removed and re-created
    directories, renames, chown and chmod of lower files."""
    flat = tmp_path / "flat"
    flat.mkdir()
    parent = ""
    layers: list[Applier] = [_l1_files, _l2_changes, _l3_changes]
    for i, apply in enumerate(layers):
        with mounted(snapshotter.prepare(f"p{i}", parent), tmp_path / f"p{i}") as mnt:
            assert tree(mnt) == tree(flat), f"layer {i}: the parents' files"
            apply(flat)
            apply(mnt)
            assert tree(mnt) == tree(flat), f"layer {i}: after its changes"
        snapshotter.commit(f"c{i}", f"p{i}")
        parent = f"c{i}"

    assert [snapshotter.stat(f"c{i}").parent for i in range(3)] == ["", "c0", "c1"]
    assert not (flat / "foobar").exists()
    assert (flat / "dir1").is_dir()
    assert not (flat / "dir1" / "f1").exists()
    assert os.stat(flat / "lib" / "libc.so").st_uid == 1000

    # The view of the top: every layer merged, read-only.
    with mounted(snapshotter.view("top-view", "c2"), tmp_path / "view") as mnt:
        assert tree(mnt) == tree(flat)
        assert (mnt / "foo").read_bytes() == b"foo bar\n"
        assert (mnt / "dir3" / "bar").read_bytes() == b"bar\n"
        assert (mnt / "dir2" / "f2").exists() is False
        assert_read_only(mnt)

    # One step back: the view of the middle layer still has what the top removed.
    with mounted(snapshotter.view("mid-view", "c1"), tmp_path / "mid") as mnt:
        assert (mnt / "bar").read_bytes() == b"bar\n"
        assert (mnt / "dir1").exists() is False
        assert (mnt / "dir3" / "f2").read_bytes() == b"..."
        assert os.readlink(mnt / "lib" / "libc.so.6") == "libc.so"


def test_a_deletion_through_the_overlay_hides_the_lower_file(
    snapshotter: Snapshotter, tmp_path: Path
) -> None:
    with mounted(snapshotter.prepare("base-a"), tmp_path / "base") as mnt:
        write(mnt / "keep", b"keep")
        write(mnt / "gone", b"gone")
    snapshotter.commit("base", "base-a")
    mounts = snapshotter.prepare("upper-a", "base")
    assert [m.type for m in mounts] == ["overlay"]
    with mounted(mounts, tmp_path / "upper") as mnt:
        (mnt / "gone").unlink()
        write(mnt / "added", b"added")
    snapshotter.commit("upper", "upper-a")
    with mounted(snapshotter.prepare("top-a", "upper"), tmp_path / "top") as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == ["added", "keep"]
        assert (mnt / "keep").read_bytes() == b"keep"
    # The lower layer itself is unchanged.
    with mounted(snapshotter.view("base-v", "base"), tmp_path / "base-v") as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == ["gone", "keep"]


# -- Stat and Update -----------------------------------------------------------------------


def _ns(ts: Any) -> int:
    nanos: int = ts.ToNanoseconds()
    return nanos


def _base_snapshots(snapshotter: Snapshotter, labels: Mapping[str, str]) -> None:
    """containerd's baseTestSnapshots: c1 <- c2 <- a1, v1; and a2, v2 on nothing."""
    snapshotter.prepare("c1-a", "", labels)
    snapshotter.commit("c1", "c1-a", labels)
    snapshotter.prepare("c2-a", "c1", labels)
    snapshotter.commit("c2", "c2-a", labels)
    snapshotter.prepare("a1", "c2", labels)
    snapshotter.prepare("a2", "", labels)
    snapshotter.view("v1", "c2", labels)
    snapshotter.view("v2", "", labels)


BASE = {
    "c1": (COMMITTED, ""),
    "c2": (COMMITTED, "c1"),
    "a1": (ACTIVE, "c2"),
    "a2": (ACTIVE, ""),
    "v1": (VIEW, "c2"),
    "v2": (VIEW, ""),
}


def test_stat_returns_name_parent_kind_labels_and_times(snapshotter: Snapshotter) -> None:
    labels = {"containerd.io/gc.root": "2024-01-01T00:00:00Z", "k": "v"}
    t1 = time.time_ns()
    _base_snapshots(snapshotter, labels)
    t2 = time.time_ns()
    for name, (kind, parent) in BASE.items():
        info = snapshotter.stat(name)
        assert (info.name, info.kind, info.parent) == (name, kind, parent), name
        assert dict(info.labels) == labels, name
        assert t1 <= _ns(info.created_at) <= t2, name
        assert info.updated_at == info.created_at, name

    # A commit's labels replace the active snapshot's (containerd: "do not inherit").
    snapshotter.prepare("relabel-a", "", {"old": "1"})
    snapshotter.commit("relabel", "relabel-a", {"new": "2"})
    assert dict(snapshotter.stat("relabel").labels) == {"new": "2"}
    assert code_of(lambda: snapshotter.stat("nothing")) == grpc.StatusCode.NOT_FOUND


def test_update_labels_with_and_without_a_field_mask(snapshotter: Snapshotter) -> None:
    """containerd's checkUpdate, on every kind of snapshot."""
    root = {"containerd.io/gc.root": "2024-01-01T00:00:00Z"}
    _base_snapshots(snapshotter, root)
    for name, (kind, parent) in BASE.items():
        info = snapshotter.stat(name)
        created = _ns(info.created_at)

        expected = {"l1": "v1", "l2": "v2", "l3": "v3", **root}
        info.parent = "doesnotexist"  # not a label: no mask, so not changed
        info.labels.clear()
        info.labels.update(expected)
        u1 = time.time_ns()
        info = snapshotter.update(info)
        u2 = time.time_ns()
        assert _ns(info.created_at) == created, name
        assert u1 <= _ns(info.updated_at) <= u2, name
        assert (info.name, info.kind, info.parent) == (name, kind, parent), name
        assert dict(info.labels) == expected, name

        # Only the masked labels change: l1 is set, l2 (absent) removed, l4 ignored.
        info.labels.clear()
        info.labels.update({"l1": "updated", "l4": "v4"})
        before = _ns(info.updated_at)
        info = snapshotter.update(info, "labels.l1", "labels.l2")
        assert dict(info.labels) == {"l1": "updated", "l3": "v3", **root}, name
        assert _ns(info.updated_at) > before, name

        expected = {"l4": "v4", **root}
        info.labels.clear()
        info.labels.update(expected)
        info = snapshotter.update(info, "labels")
        assert dict(info.labels) == expected, name

        for field in ("parent", "name", "kind", "created_at"):
            info.parent = "doesnotexist"
            refused = code_of(partial(snapshotter.update, info, field))
            assert refused == grpc.StatusCode.INVALID_ARGUMENT, (name, field)
        # What a refused update leaves, and what Stat says afterwards.
        stored = snapshotter.stat(name)
        assert (stored.parent, dict(stored.labels)) == (parent, expected), name

    gone = Info(name="nothing", labels={"a": "b"})
    assert code_of(lambda: snapshotter.update(gone)) == grpc.StatusCode.NOT_FOUND
    big = Info(name="a2", labels={"big": "x" * 4096})
    assert code_of(lambda: snapshotter.update(big)) == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(snapshotter.stat("a2").labels) == {"l4": "v4", **root}


def test_update_refuses_a_mask_naming_labels_and_another_field(
    snapshotter: Snapshotter,
) -> None:
    snapshotter.prepare("a", "", {"keep": "1"})
    info = snapshotter.stat("a")
    info.labels.clear()
    info.labels.update({"changed": "2"})
    refused = code_of(lambda: snapshotter.update(info, "labels", "parent"))
    assert refused == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(snapshotter.stat("a").labels) == {"keep": "1"}


# -- List and filters ----------------------------------------------------------------------


def test_list_returns_the_namespace_and_filters_it(snapshotter: Snapshotter) -> None:
    _base_snapshots(snapshotter, {})
    snapshotter.update(Info(name="a1", labels={"role": "app"}))
    snapshotter.update(Info(name="v2", labels={"role": "app", "x.y/z": "1"}))

    infos = {i.name: (i.kind, i.parent) for i in snapshotter.walk()}
    assert infos == BASE

    assert snapshotter.names('parent=="c1"') == ["c2"]
    assert snapshotter.names('parent=="c2"') == ["a1", "v1"]
    assert snapshotter.names("parent==c2,kind==active") == ["a1"]
    assert snapshotter.names("kind==view") == ["v1", "v2"]
    assert snapshotter.names("kind==committed", "kind==view") == ["c1", "c2", "v1", "v2"]
    assert snapshotter.names('labels."role"==app') == ["a1", "v2"]
    assert snapshotter.names('labels."x.y/z"') == ["v2"]
    assert snapshotter.names("labels.role!=app") == ["a2", "c1", "c2", "v1"]
    assert snapshotter.names("name~=^c") == ["c1", "c2"]
    assert snapshotter.names('name~="^(a|v)2$"') == ["a2", "v2"]
    assert snapshotter.names('parent==""') == ["a2", "c1", "v2"]
    assert snapshotter.names('labels."role"==nobody') == []

    for bad in ('labels."unterminated', "name~=(", "name==a,", "name=>a"):
        refused = code_of(partial(snapshotter.walk, bad))
        assert refused == grpc.StatusCode.INVALID_ARGUMENT, bad


def test_list_sends_every_snapshot_of_a_big_namespace(snapshotter: Snapshotter) -> None:
    # Replies go out in messages of at most 100 infos; none may be lost between them.
    names = [f"s{i:03d}" for i in range(250)]
    for name in names:
        snapshotter.view(name)
    assert snapshotter.names() == names


# -- Usage ---------------------------------------------------------------------------------


def test_usage_of_an_active_snapshot_grows_with_its_files(
    snapshotter: Snapshotter, tmp_path: Path
) -> None:
    with mounted(snapshotter.prepare("base-a"), tmp_path / "base") as mnt:
        write(mnt / "lower", os.urandom(MiB))
    snapshotter.commit("base", "base-a")

    snapshotter.prepare("active", "base")
    size0, inodes0 = snapshotter.usage("active")
    with mounted(snapshotter.mounts("active"), tmp_path / "active") as mnt:
        (mnt / "dir").mkdir()
        with (mnt / "dir" / "big").open("wb") as f:
            f.write(os.urandom(MiB))
            f.flush()
            os.fsync(f.fileno())
        size1, inodes1 = snapshotter.usage("active")
    # The parent's megabyte is not the active snapshot's: only its own files count.
    assert size0 < MiB
    assert size1 >= size0 + MiB
    assert inodes1 == inodes0 + 2  # dir and dir/big
    base_size, base_inodes = snapshotter.usage("base")
    assert base_size >= MiB
    assert base_inodes == 1
    # Commit keeps the files, so the committed snapshot's usage is the active one's.
    snapshotter.commit("top", "active")
    assert snapshotter.usage("top") == (size1, inodes1)
    assert code_of(lambda: snapshotter.usage("active")) == grpc.StatusCode.NOT_FOUND


# -- Remove --------------------------------------------------------------------------------


def test_remove_of_a_parent_is_refused_and_changes_nothing(
    snapshotter: Snapshotter, tmp_path: Path
) -> None:
    with mounted(snapshotter.prepare("base-a"), tmp_path / "base") as mnt:
        write(mnt / "file", b"base")
    snapshotter.commit("base", "base-a")
    snapshotter.prepare("mid-a", "base")
    snapshotter.commit("mid", "mid-a")
    snapshotter.prepare("child", "mid")
    before = {i.name: i for i in snapshotter.walk()}

    for key in ("base", "mid"):
        refused = code_of(partial(snapshotter.remove, key))
        assert refused == grpc.StatusCode.FAILED_PRECONDITION, key
    assert {i.name: i for i in snapshotter.walk()} == before
    with mounted(snapshotter.mounts("child"), tmp_path / "child") as mnt:
        assert (mnt / "file").read_bytes() == b"base"

    snapshotter.remove("child")
    snapshotter.remove("mid")
    snapshotter.remove("base")
    assert snapshotter.names() == []
    assert code_of(lambda: snapshotter.remove("base")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: snapshotter.remove("never")) == grpc.StatusCode.NOT_FOUND


def test_removed_keys_can_be_used_again(snapshotter: Snapshotter, tmp_path: Path) -> None:
    """containerd's checkRemove: a removed key may come back as any kind."""
    snapshotter.prepare("committed-a")
    snapshotter.commit("committed-1", "committed-a")
    snapshotter.prepare("reuse-1", "committed-1")
    snapshotter.remove("reuse-1")
    snapshotter.view("reuse-1", "committed-1")
    snapshotter.remove("reuse-1")
    with mounted(snapshotter.prepare("reuse-1"), tmp_path / "reuse") as mnt:
        assert list(mnt.iterdir()) == []  # nothing left of the removed ones
        write(mnt / "new", b"new")
    snapshotter.remove("committed-1")
    snapshotter.commit("committed-1", "reuse-1")
    assert snapshotter.stat("committed-1").kind == COMMITTED
    with mounted(snapshotter.view("v", "committed-1"), tmp_path / "v") as mnt:
        assert (mnt / "new").read_bytes() == b"new"


# -- refusals ------------------------------------------------------------------------------


def test_commit_refusals(snapshotter: Snapshotter) -> None:
    snapshotter.prepare("a")
    snapshotter.commit("c", "a")
    snapshotter.view("v", "c")
    snapshotter.prepare("b")
    # Only an active snapshot can be committed.
    assert code_of(lambda: snapshotter.commit("c2", "c")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: snapshotter.commit("v2", "v")) == grpc.StatusCode.FAILED_PRECONDITION
    assert code_of(lambda: snapshotter.commit("x", "nothing")) == grpc.StatusCode.NOT_FOUND
    # A name that is taken, and a label too big: the active snapshot stays active.
    assert code_of(lambda: snapshotter.commit("c", "b")) == grpc.StatusCode.ALREADY_EXISTS
    big = {"big": "x" * 4094}
    assert code_of(lambda: snapshotter.commit("d", "b", big)) == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshotter.names() == ["b", "c", "v"]
    assert snapshotter.stat("b").kind == ACTIVE


def test_prepare_and_view_refusals(daemon: Daemon, snapshotter: Snapshotter) -> None:
    snapshotter.prepare("a")
    snapshotter.commit("c", "a")
    dirs = snapshot_dirs(daemon)
    unknown = code_of(lambda: snapshotter.prepare("p", "nothing"))
    assert unknown == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: snapshotter.view("v", "nothing")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: snapshotter.prepare("")) == grpc.StatusCode.INVALID_ARGUMENT

    # containerd's limit: key and value of one label together at most 4096 bytes.
    fits = {"big": "x" * (4096 - 3)}
    snapshotter.prepare("fits", "c", fits)
    assert dict(snapshotter.stat("fits").labels) == fits
    over = {"big": "x" * (4096 - 2)}
    assert code_of(lambda: snapshotter.prepare("over", "c", over)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(lambda: snapshotter.view("over", "c", over)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert snapshotter.names() == ["c", "fits"]
    assert code_of(lambda: snapshotter.stat("over")) == grpc.StatusCode.NOT_FOUND
    # Nothing refused left a directory behind; "fits" has the one new one.
    assert len(snapshot_dirs(daemon) - dirs) == 1


@pytest.mark.parametrize("kind", ["active", "committed", "view"])
def test_prepare_or_view_of_a_taken_key_keeps_the_snapshot(
    snapshotter: Snapshotter, tmp_path: Path, kind: str
) -> None:
    """containerd's checkSnapshotterPrepareView: a second Prepare or View of a key fails,
    and the snapshot that has the key is left as it was."""
    with mounted(snapshotter.prepare("base-a"), tmp_path / "base") as mnt:
        write(mnt / "file", b"base")
    snapshotter.commit("base", "base-a")
    make = {
        "active": lambda: snapshotter.prepare("key", "base", {"mine": "1"}),
        "committed": lambda: snapshotter.commit("key", "base-b", {"mine": "1"}),
        "view": lambda: snapshotter.view("key", "base", {"mine": "1"}),
    }
    snapshotter.prepare("base-b", "base")
    make[kind]()
    before = snapshotter.stat("key")

    again: list[Callable[[], object]] = [
        partial(snapshotter.prepare, "key", "base"),
        partial(snapshotter.view, "key", "base"),
        partial(snapshotter.prepare, "key"),
    ]
    for call in again:
        assert code_of(call) == grpc.StatusCode.ALREADY_EXISTS
        assert snapshotter.stat("key") == before
    if kind != "committed":
        with mounted(snapshotter.mounts("key"), tmp_path / "key") as mnt:
            assert (mnt / "file").read_bytes() == b"base"


def test_mounts_of_a_committed_snapshot_is_a_failed_precondition(
    snapshotter: Snapshotter,
) -> None:
    snapshotter.prepare("a")
    snapshotter.commit("c", "a")
    assert code_of(lambda: snapshotter.mounts("c")) == grpc.StatusCode.FAILED_PRECONDITION


def test_prepare_on_a_parent_not_committed_is_an_invalid_argument(
    snapshotter: Snapshotter,
) -> None:
    snapshotter.prepare("a")
    assert code_of(lambda: snapshotter.prepare("b", "a")) == grpc.StatusCode.INVALID_ARGUMENT


def test_prepare_on_a_parent_not_committed_is_refused(snapshotter: Snapshotter) -> None:
    snapshotter.prepare("a")
    snapshotter.view("v")
    for parent in ("a", "v"):
        refused = code_of(partial(snapshotter.prepare, "b", parent))
        assert refused != grpc.StatusCode.OK, parent
    assert snapshotter.names() == ["a", "v"]


CHAIN = "sha256:" + "1" * 64
GOOD_REF = "registry.example/app:1"
GOOD_DIGEST = "sha256:" + "a" * 64
STARGZ = (
    "containerd.io/snapshot/remote/stargz.reference",
    "containerd.io/snapshot/remote/stargz.digest",
)
CRI = ("containerd.io/snapshot/cri.image-ref", "containerd.io/snapshot/cri.layer-digest")


@pytest.mark.parametrize(
    ("names", "ref", "digest"),
    [
        (STARGZ, "::not a ref::", GOOD_DIGEST),
        (CRI, "::not a ref::", GOOD_DIGEST),
        (STARGZ, GOOD_REF, "sha256:short"),
    ],
    ids=["stargz-ref", "cri-ref", "stargz-digest"],
)
def test_remote_labels_that_do_not_parse_are_refused(
    daemon: Daemon, snapshotter: Snapshotter, names: tuple[str, str], ref: str, digest: str
) -> None:
    dirs = snapshot_dirs(daemon)
    labels = {"containerd.io/snapshot.ref": CHAIN, names[0]: ref, names[1]: digest}
    refused = code_of(lambda: snapshotter.prepare("extract-1", "", labels))
    assert refused == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshotter.names() == []
    assert code_of(lambda: snapshotter.stat("extract-1")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: snapshotter.stat(CHAIN)) == grpc.StatusCode.NOT_FOUND
    assert snapshot_dirs(daemon) == dirs


def test_a_layer_with_no_remote_labels_is_unpacked_the_usual_way(
    snapshotter: Snapshotter, tmp_path: Path
) -> None:
    """containerd's unpacker: keys as its metadata layer sends them, the target chain in a
    label, and afterwards the filter it looks the committed layer up with."""
    parent = "ns/1/sha256:" + "2" * 64
    snapshotter.prepare("ns/0/extract-1", "")
    snapshotter.commit(parent, "ns/0/extract-1")
    key = f"ns/2/extract-598455813-Abcd {CHAIN}"
    mounts = snapshotter.prepare(key, parent, {"containerd.io/snapshot.ref": CHAIN})
    with mounted(mounts, tmp_path / "extract") as mnt:
        write(mnt / "unpacked", b"layer")
    snapshotter.commit(f"ns/3/{CHAIN}", key, {"containerd.io/snapshot.ref": CHAIN})
    found = snapshotter.names(f'labels."containerd.io/snapshot.ref"=={CHAIN},parent=="{parent}"')
    assert found == [f"ns/3/{CHAIN}"]
    assert snapshotter.names("name~=^ns/[0-9]+/sha256:") == [parent, f"ns/3/{CHAIN}"]
    with mounted(snapshotter.view("ns/4/view", f"ns/3/{CHAIN}"), tmp_path / "view") as mnt:
        assert (mnt / "unpacked").read_bytes() == b"layer"


def test_an_empty_label_value_clears_the_label(snapshotter: Snapshotter) -> None:
    snapshotter.prepare("a", "", {"keep": "1", "empty": ""})
    assert dict(snapshotter.stat("a").labels) == {"keep": "1"}
    info = snapshotter.stat("a")
    info.labels.clear()
    info.labels.update({"keep": ""})
    assert dict(snapshotter.update(info, "labels.keep").labels) == {}
    assert dict(snapshotter.stat("a").labels) == {}


def test_concurrent_calls_each_take_effect(snapshotter: Snapshotter) -> None:
    # containerd unpacks layers, and runs containers, in parallel.
    def life(i: int) -> str:
        snapshotter.prepare(f"a{i}", "", {"i": str(i)})
        snapshotter.commit(f"c{i}", f"a{i}", {"i": str(i)})
        snapshotter.view(f"v{i}", f"c{i}")
        return snapshotter.stat(f"v{i}").parent

    n = 48
    with ThreadPoolExecutor(max_workers=16) as pool:
        parents = list(pool.map(life, range(n)))
    assert parents == [f"c{i}" for i in range(n)]
    infos = snapshotter.walk("kind==committed")
    assert sorted((i.name, i.labels["i"]) for i in infos) == sorted(
        (f"c{i}", str(i)) for i in range(n)
    )
    assert len(snapshotter.names()) == 2 * n


# -- views ---------------------------------------------------------------------------------


def test_views(snapshotter: Snapshotter, tmp_path: Path) -> None:
    # With no parent: an empty, read-only directory.
    mounts = snapshotter.view("empty")
    assert "ro" in mounts[0].options
    with mounted(mounts, tmp_path / "empty") as mnt:
        assert list(mnt.iterdir()) == []
        assert_read_only(mnt)

    # Of a committed chain of two: both layers, read-only.
    with mounted(snapshotter.prepare("l1-a"), tmp_path / "l1") as mnt:
        write(mnt / "one", b"1")
    snapshotter.commit("l1", "l1-a")
    with mounted(snapshotter.prepare("l2-a", "l1"), tmp_path / "l2") as mnt:
        write(mnt / "two", b"2")
    snapshotter.commit("l2", "l2-a")
    for parent, names in (("l1", ["one"]), ("l2", ["one", "two"])):
        with mounted(snapshotter.view(f"v-{parent}", parent), tmp_path / parent) as mnt:
            assert sorted(p.name for p in mnt.iterdir()) == names
            assert_read_only(mnt)
            with pytest.raises(OSError, match="Read-only file system") as caught:
                (mnt / "one").unlink()
            assert caught.value.errno == errno.EROFS
        # A view stands on its parent like an active snapshot does.
        code = code_of(partial(snapshotter.remove, parent))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    # A view cannot be committed, and removing it frees the chain.
    assert code_of(lambda: snapshotter.commit("x", "v-l2")) == grpc.StatusCode.FAILED_PRECONDITION
    for key in ("v-l2", "v-l1", "l2", "l1", "empty"):
        snapshotter.remove(key)
    assert snapshotter.names() == []


# -- namespaces ----------------------------------------------------------------------------


def test_namespaces_are_isolated(daemon: Daemon, tmp_path: Path) -> None:
    suffix = secrets.token_hex(4)
    a = Snapshotter(daemon.stub, f"a-{suffix}")
    b = a.in_namespace(f"b-{suffix}")
    shared = f"shared-{suffix}"  # unique: the namespace-less calls see every test's keys
    with mounted(a.prepare("active"), tmp_path / "a") as mnt:
        write(mnt / "whose", b"a")
    a.commit(shared, "active")

    assert code_of(lambda: b.stat(shared)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: b.view("v", shared)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: b.remove(shared)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: b.usage(shared)) == grpc.StatusCode.NOT_FOUND
    assert b.names() == []

    # The same keys, independently, in b.
    with mounted(b.prepare("active"), tmp_path / "b") as mnt:
        assert list(mnt.iterdir()) == []
        write(mnt / "whose", b"b")
    b.commit(shared, "active", {"ns": "b"})
    a.view("v", shared)
    b.view("v", shared)
    for client, whose in ((a, "a"), (b, "b")):
        with mounted(client.mounts("v"), tmp_path / f"v-{whose}") as mnt:
            assert (mnt / "whose").read_bytes() == whose.encode()
    assert dict(a.stat(shared).labels) == {}
    assert dict(b.stat(shared).labels) == {"ns": "b"}
    assert a.names() == b.names() == [shared, "v"]

    # Without namespace metadata (containerd's gc): every namespace at once.
    everyone = a.in_namespace("")
    assert [i.name for i in everyone.walk(f'name=="{shared}"')] == [shared, shared]
    assert everyone.stat(shared).name == shared
    assert code_of(lambda: everyone.prepare(f"x-{suffix}")) == grpc.StatusCode.INVALID_ARGUMENT
    gc_key = f"gc-{suffix}"
    a.view(gc_key)
    b.view(gc_key)
    everyone.remove(gc_key)  # from each namespace that has it
    assert code_of(lambda: a.stat(gc_key)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: b.stat(gc_key)) == grpc.StatusCode.NOT_FOUND

    # A remove in a leaves b alone.
    a.remove("v")
    a.remove(shared)
    assert a.names() == []
    assert b.names() == [shared, "v"]
    with mounted(b.mounts("v"), tmp_path / "b-again") as mnt:
        assert (mnt / "whose").read_bytes() == b"b"

    bad = a.in_namespace("bad/namespace")
    assert code_of(bad.walk) == grpc.StatusCode.INVALID_ARGUMENT


# -- Mounts and Cleanup --------------------------------------------------------------------


def test_mounts_are_those_prepare_returned(snapshotter: Snapshotter, tmp_path: Path) -> None:
    first = snapshotter.prepare("first")
    assert snapshotter.mounts("first") == first
    with mounted(first, tmp_path / "first") as mnt:
        write(mnt / "f", b"f")
    snapshotter.commit("c", "first")
    second = snapshotter.prepare("second", "c")
    assert snapshotter.mounts("second") == second
    view = snapshotter.view("view", "c")
    assert snapshotter.mounts("view") == view
    # Both answers mount the same directory: a file written through one is in the other.
    with mounted(second, tmp_path / "one") as mnt:
        write(mnt / "through-prepare", b"x")
    with mounted(snapshotter.mounts("second"), tmp_path / "two") as mnt:
        assert sorted(p.name for p in mnt.iterdir()) == ["f", "through-prepare"]
    assert code_of(lambda: snapshotter.mounts("nothing")) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: snapshotter.mounts("c")) != grpc.StatusCode.OK


def test_cleanup_removes_only_what_no_snapshot_names(
    daemon: Daemon, snapshotter: Snapshotter, tmp_path: Path
) -> None:
    with mounted(snapshotter.prepare("live"), tmp_path / "live") as mnt:
        write(mnt / "kept", b"kept")
    orphan = daemon.root / SNAPSHOTS / f"orphan-{secrets.token_hex(4)}"
    (orphan / "fs").mkdir(parents=True)
    (orphan / "fs" / "junk").write_bytes(b"junk")

    snapshotter.cleanup()
    assert not orphan.exists()
    assert snapshotter.names() == ["live"]
    with mounted(snapshotter.mounts("live"), tmp_path / "again") as mnt:
        assert (mnt / "kept").read_bytes() == b"kept"
    snapshotter.in_namespace("").cleanup()  # containerd's gc calls it with no namespace
    assert snapshotter.names() == ["live"]
