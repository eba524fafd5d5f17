"""MergedTree: the OCI layer rules on hand-made layer indexes (no tar, no FUSE)."""

from __future__ import annotations

import random

import pytest

from fusesnap.errors import LayerError, NotFoundError
from fusesnap.fs import MergedTree, Node
from fusesnap.index import Entry, EntryType
from tests.fs.helpers import (
    MTIME,
    directory,
    file,
    hardlink,
    layer,
    opaque,
    symlink,
    whiteout,
)


def build(*layers: tuple[Entry, ...] | list[Entry]) -> MergedTree:
    return MergedTree.build([layer(*entries) for entries in layers])


def paths(tree: MergedTree) -> list[str]:
    return [p for p, _ in tree.walk() if p]


def kind(tree: MergedTree, path: str) -> EntryType:
    return tree.lookup(path).entry.type


# -- later layers win -----------------------------------------------------------------------


def test_later_layer_wins_and_serves_its_content() -> None:
    tree = build([file("f", "old"), file("g", "lower")], [file("f", "new", mode=0o600)])
    node = tree.lookup("f")
    assert node.layer == 1
    assert node.entry.mode == 0o600
    assert node.entry.size == 3
    assert tree.lookup("g").layer == 0


def test_duplicate_path_in_one_layer_last_entry_wins() -> None:
    tree = build([file("f", "first"), file("f", "second!")])
    assert tree.lookup("f").entry.size == 7


# -- whiteouts ---------------------------------------------------------------------------------


def test_whiteout_deletes_a_lower_file() -> None:
    tree = build(
        [directory("a"), file("a/keep"), file("a/gone")], [directory("a"), whiteout("a/gone")]
    )
    assert paths(tree) == ["a", "a/keep"]


def test_whiteout_deletes_a_lower_directory_with_its_subtree() -> None:
    tree = build(
        [directory("d"), directory("d/sub"), file("d/sub/x"), file("d/y"), file("b")],
        [whiteout("d")],
    )
    assert paths(tree) == ["b"]


def test_whiteout_of_an_absent_path_is_ignored_and_creates_no_parent() -> None:
    tree = build([file("f")], [whiteout("nothere"), whiteout("nodir/x"), opaque("nodir2")])
    assert paths(tree) == ["f"]


def test_whiteout_reaches_lower_layers_only_whatever_the_tar_order() -> None:
    tree = build(
        [directory("d"), file("d/old")],
        [file("d/new"), whiteout("d/new"), whiteout("d/old"), whiteout("d/later"),
         file("d/later")],
    )  # fmt: skip
    assert paths(tree) == ["d", "d/later", "d/new"]


def test_whiteout_then_recreate_in_the_same_layer_gives_a_fresh_directory() -> None:
    tree = build(
        [directory("d"), file("d/old")], [whiteout("d"), directory("d", mode=0o700), file("d/new")]
    )
    assert paths(tree) == ["d", "d/new"]
    assert tree.lookup("d").entry.mode == 0o700


def test_whiteout_of_a_file_in_a_directory_that_is_a_file_is_ignored() -> None:
    tree = build([file("f")], [whiteout("f/x")])
    assert paths(tree) == ["f"]


# -- opaque directories ------------------------------------------------------------------


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_hides_lower_children_and_keeps_same_layer_ones(marker_first: bool) -> None:
    lower = [directory("opq"), file("opq/old"), directory("opq/sub"), file("opq/sub/x"),
             directory("other"), file("other/old")]  # fmt: skip
    upper = [directory("opq", mode=0o750), file("opq/new"), directory("opq/sub"), file("opq/sub/y")]
    upper.insert(1 if marker_first else len(upper), opaque("opq"))
    tree = build(lower, [*upper, file("other/new")])
    assert paths(tree) == [
        "opq", "opq/new", "opq/sub", "opq/sub/y", "other", "other/new", "other/old",
    ]  # fmt: skip
    assert tree.lookup("opq").entry.mode == 0o750


def test_opaque_root_hides_every_lower_path() -> None:
    tree = build([directory("a"), file("a/x"), file("b")], [opaque(""), file("c")])
    assert paths(tree) == ["c"]


# -- whiteout names are never visible ---------------------------------------------------


def test_whiteout_and_aufs_names_are_never_listed() -> None:
    tree = build(
        [directory("a"), file("a/x")],
        [whiteout("a/x"), opaque("a"), file(".wh..wh.aufs"), directory(".wh..wh.plnk"),
         file(".wh..wh.plnk/123.456", "stash"), directory(".wh..wh.orph"), file("a/y")],
    )  # fmt: skip
    assert paths(tree) == ["a", "a/y"]
    assert not any(".wh." in p for p, _ in tree.walk())
    with pytest.raises(NotFoundError):
        tree.lookup(".wh..wh.plnk")


def test_whiteout_names_in_the_bottom_layer_are_hidden_too() -> None:
    tree = build([file(".wh.ghost"), directory("d"), opaque("d"), file("d/f")])
    assert paths(tree) == ["d", "d/f"]


def test_hardlink_into_the_aufs_link_stash_takes_the_stashed_file() -> None:
    tree = build(
        [file("old")],
        [directory(".wh..wh.plnk"), file(".wh..wh.plnk/1.2", "shared"),
         hardlink("a", ".wh..wh.plnk/1.2"), hardlink("b", ".wh..wh.plnk/1.2")],
    )  # fmt: skip
    assert paths(tree) == ["a", "b", "old"]
    a, b = tree.lookup("a"), tree.lookup("b")
    assert a.ino == b.ino
    assert a.nlink == 2
    assert a.entry.size == 6


# -- replacing one type by another -------------------------------------------------------


def test_file_replaced_by_a_directory() -> None:
    tree = build([file("x", "was a file")], [directory("x"), file("x/inside")])
    assert kind(tree, "x") is EntryType.DIR
    assert paths(tree) == ["x", "x/inside"]


def test_directory_replaced_by_a_file_drops_the_lower_subtree() -> None:
    tree = build(
        [directory("x"), directory("x/sub"), file("x/sub/deep"), file("x/child")], [file("x", "f")]
    )
    assert paths(tree) == ["x"]
    assert kind(tree, "x") is EntryType.FILE
    assert tree.root.nlink == 2


def test_file_to_directory_and_back_over_three_layers() -> None:
    tree = build([file("x", "v1")], [directory("x"), file("x/inside")], [file("x", "v3!")])
    node = tree.lookup("x")
    assert (node.entry.type, node.layer, node.entry.size) == (EntryType.FILE, 2, 3)
    assert paths(tree) == ["x"]


def test_symlink_replaced_by_a_directory() -> None:
    tree = build([directory("t"), file("t/t"), symlink("l", "t")], [directory("l"), file("l/own")])
    assert kind(tree, "l") is EntryType.DIR
    assert paths(tree) == ["l", "l/own", "t", "t/t"]


def test_directory_over_directory_merges_children_and_takes_upper_attributes() -> None:
    tree = build(
        [directory("d", mode=0o755, uid=1, gid=2, xattrs={"user.a": b"1"}), file("d/lower")],
        [directory("d", mode=0o700, uid=3, gid=4), file("d/upper")],
    )
    d = tree.lookup("d")
    assert (d.entry.mode, d.entry.uid, d.entry.gid, dict(d.entry.xattrs), d.layer) == (
        0o700, 3, 4, {}, 1,
    )  # fmt: skip
    assert paths(tree) == ["d", "d/lower", "d/upper"]


# -- hardlinks ---------------------------------------------------------------------------


def test_hardlinks_in_one_layer_share_one_node() -> None:
    tree = build([
        directory("h"), file("h/orig", "shared", mode=0o640, uid=7), hardlink("h/link1", "h/orig"),
        directory("h/sub"), hardlink("h/sub/link2", "h/link1"), file("h/alone"),
    ])  # fmt: skip
    nodes = [tree.lookup(p) for p in ("h/orig", "h/link1", "h/sub/link2")]
    assert len({n.ino for n in nodes}) == 1
    assert all(n.nlink == 3 for n in nodes)
    assert all(n.entry.path == "h/orig" and n.entry.mode == 0o640 for n in nodes)
    assert tree.lookup("h/alone").nlink == 1
    assert tree.stats.files == 2  # one inode for the three names


def test_hardlink_to_a_lower_file_serves_the_lower_content() -> None:
    tree = build(
        [directory("h"), file("h/orig", "lower")], [directory("h2"), hardlink("h2/link", "h/orig")]
    )
    orig, link = tree.lookup("h/orig"), tree.lookup("h2/link")
    assert orig.ino == link.ino
    assert link.nlink == 2
    assert link.layer == 0
    assert link.entry.chunks == orig.entry.chunks


def test_hardlink_to_a_missing_target_names_layer_and_entry() -> None:
    layers = [layer(file("a")), layer(directory("d"), hardlink("d/bad", "nowhere"))]
    with pytest.raises(LayerError) as err:
        MergedTree.build(layers)
    msg = str(err.value)
    assert "layer 1" in msg
    assert layers[1].layer_digest.short in msg
    assert "'d/bad'" in msg
    assert "'nowhere'" in msg


def test_hardlink_to_a_whited_out_target_is_an_error() -> None:
    with pytest.raises(LayerError, match="hardlink target 'x' does not exist"):
        build([file("x")], [whiteout("x"), hardlink("h", "x")])


def test_hardlink_to_a_directory_is_an_error() -> None:
    with pytest.raises(LayerError, match="is a directory"):
        build([directory("d")], [hardlink("h", "d")])


def test_hardlink_to_itself_is_an_error_as_the_old_path_goes_first() -> None:
    with pytest.raises(LayerError, match="does not exist"):
        build([file("x")], [hardlink("x", "x")])


def test_hardlink_group_partially_replaced_keeps_the_other_names() -> None:
    tree = build(
        [file("a", "shared"), hardlink("b", "a"), hardlink("c", "a"), hardlink("d", "a")],
        [file("a", "replaced"), whiteout("c")],
    )
    assert paths(tree) == ["a", "b", "d"]
    a, b, d = (tree.lookup(p) for p in "abd")
    assert b.ino == d.ino != a.ino
    assert (a.nlink, b.nlink) == (1, 2)
    assert b.entry.size == len("shared")


def test_hardlink_made_before_its_target_is_replaced_keeps_the_old_bytes() -> None:
    tree = build([file("x", "old")], [hardlink("keep", "x"), file("x", "newer")])
    assert tree.lookup("keep").entry.size == 3
    assert tree.lookup("keep").layer == 0
    assert tree.lookup("x").nlink == 1


def test_hardlink_to_a_symlink_shares_the_symlink() -> None:
    tree = build([symlink("s", "nowhere"), hardlink("h", "s")])
    h = tree.lookup("h")
    assert (h.entry.type, h.entry.linkname, h.nlink) == (EntryType.SYMLINK, "nowhere", 2)


# -- parents ---------------------------------------------------------------------------------


def test_implicit_parents_are_root_owned_0755_with_mtime_0() -> None:
    tree = build([file("x/y/z", uid=5)])
    for path in ("x", "x/y"):
        e = tree.lookup(path).entry
        assert (e.type, e.mode, e.uid, e.gid, e.mtime) == (EntryType.DIR, 0o755, 0, 0, 0)
    assert tree.lookup("x").nlink == 3


def test_a_directory_entry_after_its_children_sets_attributes_and_keeps_them() -> None:
    tree = build([file("d/child"), directory("d", mode=0o711)])
    assert tree.lookup("d").entry.mode == 0o711
    assert paths(tree) == ["d", "d/child"]


def test_entry_under_a_file_is_an_error() -> None:
    with pytest.raises(LayerError, match=r"entry 'a/b': parent 'a' is not a directory"):
        build([file("a")], [file("a/b")])


def test_entries_whiteouts_and_link_targets_resolve_parents_through_symlinks() -> None:
    tree = build(
        [directory("t"), file("t/x"), file("t/y"), symlink("rel", "t"), symlink("abs", "/t"),
         symlink("up", "../../../t")],
        [file("rel/a"), file("abs/b"), file("up/c"), whiteout("rel/x"), hardlink("h", "abs/y")],
    )  # fmt: skip
    assert paths(tree) == ["abs", "h", "rel", "t", "t/a", "t/b", "t/c", "t/y", "up"]
    assert tree.lookup("h").ino == tree.lookup("t/y").ino


def test_a_symlink_to_a_missing_directory_gets_implicit_directories() -> None:
    tree = build([symlink("s", "../../missing/deep")], [file("s/b")])
    assert paths(tree) == ["missing", "missing/deep", "missing/deep/b", "s"]


def test_symlink_loop_is_an_error() -> None:
    with pytest.raises(LayerError, match="too many levels of symbolic links"):
        build([symlink("a", "b"), symlink("b", "a")], [file("a/x")])


# -- the root ----------------------------------------------------------------------------


def test_root_defaults_to_0755_root_owned() -> None:
    root = build([file("f")]).root
    assert root.ino == 1
    assert (root.entry.type, root.entry.mode, root.entry.uid, root.entry.mtime) == (
        EntryType.DIR, 0o755, 0, 0,
    )  # fmt: skip


def test_root_takes_a_layers_root_entry() -> None:
    root = build([directory("", mode=0o700, uid=5, gid=6), file("f")]).root
    assert (root.entry.mode, root.entry.uid, root.entry.gid, root.entry.mtime) == (
        0o700, 5, 6, MTIME,
    )  # fmt: skip


def test_non_directory_root_entry_is_an_error() -> None:
    with pytest.raises(LayerError, match="cannot replace the root"):
        build([file("")])


# -- numbering and shape -----------------------------------------------------------------


def _image() -> list[list[Entry]]:
    return [
        [directory("b"), file("b/2"), file("b/1"), directory("a"), directory("a/z"),
         file("a/z/f"), file("c"), hardlink("a/link", "c")],
        [file("a-b"), directory("a/y"), whiteout("b/2")],
    ]  # fmt: skip


def test_inode_numbers_follow_the_sorted_walk() -> None:
    tree = build(*_image())
    first: dict[int, str] = {}
    for path, node in tree.walk():
        first.setdefault(node.ino, path)
    assert list(first) == list(range(1, len(tree) + 1))
    assert first == {
        1: "", 2: "a", 3: "a/link", 4: "a/y", 5: "a/z", 6: "a/z/f", 7: "a-b", 8: "b",
        9: "b/1",
    }  # fmt: skip
    assert tree.lookup("c").ino == 3
    assert tree.path_of(3) == "a/link"


def test_inode_numbers_are_the_same_on_every_build_and_any_tar_order() -> None:
    a = build(*_image())
    b = build(*_image())
    shuffled = _image()
    random.Random(4).shuffle(shuffled[0])
    shuffled[0].sort(key=lambda e: e.type is EntryType.HARDLINK)  # targets before links
    c = build(*shuffled)
    walks = [[(p, n.ino, n.nlink) for p, n in t.walk()] for t in (a, b, c)]
    assert walks[0] == walks[1] == walks[2]


def test_directory_nlink_is_two_plus_subdirectories() -> None:
    tree = build(
        [directory("d"), directory("d/a"), directory("d/b"), file("d/f")],
        [file("d/a", "now a file")],
    )
    assert tree.lookup("d").nlink == 3
    assert tree.lookup("d/b").nlink == 2
    assert tree.root.nlink == 3


def test_listdir_walk_len_and_stats() -> None:
    tree = build(
        [directory("d"), file("d/b", "12"), file("d/a", "1"), file("d/C"), symlink("d/s", "a"),
         Entry("d/fifo", EntryType.FIFO), hardlink("d/h", "d/a")],
    )  # fmt: skip
    d = tree.lookup("d")
    assert [name for name, _ in tree.listdir(d.ino)] == ["C", "a", "b", "fifo", "h", "s"]
    assert all(isinstance(n, Node) for _, n in tree.listdir(d.ino))
    assert list(d.children or {}) == ["C", "a", "b", "fifo", "h", "s"]
    assert [p for p, _ in tree.walk("/d/")] == [
        "d", "d/C", "d/a", "d/b", "d/fifo", "d/h", "d/s",
    ]  # fmt: skip
    assert len(tree) == 7  # root, d, C, a (= h), b, fifo, s
    s = tree.stats
    assert (s.files, s.dirs, s.symlinks, s.other, s.file_bytes) == (3, 2, 1, 1, 3)


def test_lookup_accepts_slashes_and_dots() -> None:
    tree = build([directory("a"), file("a/b")])
    assert tree.lookup("/a/./b/") == tree.lookup("a/b")
    assert tree.lookup("/").ino == tree.lookup("").ino == 1


@pytest.mark.parametrize("path", ["missing", "a/missing", "a/b/c", "a/../a", ".wh.x"])
def test_lookup_of_a_missing_path_raises_not_found(path: str) -> None:
    tree = build([directory("a"), file("a/b"), symlink("s", "a")])
    with pytest.raises(NotFoundError, match=f"path {path}: not found"):
        tree.lookup(path)


def test_lookup_follows_no_symlinks() -> None:
    tree = build([directory("a"), file("a/b"), symlink("s", "a")])
    assert tree.lookup("s").entry.type is EntryType.SYMLINK
    with pytest.raises(NotFoundError):
        tree.lookup("s/b")


def test_child_node_and_listdir_errors() -> None:
    tree = build([directory("a"), file("a/b")])
    a = tree.lookup("a")
    assert tree.child(a.ino, "b") == tree.lookup("a/b")
    with pytest.raises(NotFoundError, match="path a/nope: not found"):
        tree.child(a.ino, "nope")
    with pytest.raises(NotFoundError, match="inode 99: not found"):
        tree.child(99, "b")
    with pytest.raises(NotFoundError, match="inode 0: not found"):
        tree.node(0)
    with pytest.raises(NotADirectoryError):
        tree.listdir(tree.lookup("a/b").ino)
    with pytest.raises(NotFoundError):
        tree.listdir(42)


def test_node_children_cannot_be_changed() -> None:
    tree = build([directory("a")])
    children = tree.root.children
    assert children is not None
    with pytest.raises(TypeError):
        children["x"] = 5  # type: ignore[index]


def test_empty_image_is_just_the_root() -> None:
    tree = MergedTree.build([])
    assert len(tree) == 1
    assert tree.listdir(1) == []
    assert [p for p, _ in tree.walk()] == [""]
