"""diff_trees: added, removed and changed paths between two merged trees."""

from __future__ import annotations

from fusesnap.fs import Change, MergedTree, diff_trees
from fusesnap.index import Entry
from tests.fs.helpers import directory, file, hardlink, layer, symlink


def tree(*entries: Entry) -> MergedTree:
    return MergedTree.build([layer(*entries)])


BASE = (
    directory("etc"), file("etc/passwd", "root:x:0:0"), file("etc/hosts", "localhost"),
    directory("usr"), directory("usr/share"), directory("usr/share/doc"), file("usr/share/doc/a"),
    file("usr/share/doc/b"), file("bin-sh", "#!"), symlink("lib", "usr/lib"),
)  # fmt: skip


def test_identical_trees_have_no_changes() -> None:
    assert diff_trees(tree(*BASE), tree(*BASE)) == []


def test_added_removed_and_changed_sorted_by_path() -> None:
    b = tree(
        directory("etc"), file("etc/passwd", "root:x:0:0:changed"), file("etc/hosts", "localhost",
        mode=0o600), directory("etc/new.d"), file("etc/new.d/x"), file("etc/new.d/y"),
        file("bin-sh", "#!"), symlink("lib", "usr/lib64"), file("zzz"),
    )  # fmt: skip
    assert diff_trees(tree(*BASE), b) == [
        Change("changed", "etc/hosts", ("mode",)),
        Change("added", "etc/new.d", (), 2),
        Change("changed", "etc/passwd", ("size", "content")),
        Change("changed", "lib", ("target",)),
        Change("removed", "usr", (), 4),
        Change("added", "zzz"),
    ]


def test_removed_directory_reports_the_directory_with_its_descendant_count() -> None:
    changes = diff_trees(tree(*BASE), tree(*BASE[:3], *BASE[8:]))
    assert changes == [Change("removed", "usr", (), 4)]


def test_type_change_counts_the_paths_below_the_directory_side() -> None:
    a = tree(directory("x"), directory("x/y"), file("x/y/z"), file("f"))
    b = tree(file("x"), directory("f"), file("f/inside"))
    assert diff_trees(a, b) == [
        Change("changed", "f", ("type",), 1),
        Change("changed", "x", ("type",), 2),
    ]


def test_same_content_in_another_layer_is_unchanged_and_attributes_are_compared() -> None:
    a = tree(directory("d", uid=1), file("d/f", "same"))
    b = MergedTree.build([layer(directory("d", uid=2)), layer(file("d/f", "same"))])
    assert diff_trees(a, b) == [Change("changed", "d", ("uid",))]


def test_hardlinking_a_file_changes_its_link_count() -> None:
    a = tree(file("f", "x"), file("g", "x"))
    b = tree(file("f", "x"), hardlink("g", "f"))
    assert diff_trees(a, b) == [
        Change("changed", "f", ("nlink",)),
        Change("changed", "g", ("nlink",)),
    ]


def test_root_attribute_changes_come_first() -> None:
    a = tree(file("a"))
    b = tree(directory("", mode=0o700), file("a"))
    assert diff_trees(a, b) == [Change("changed", "", ("mode", "mtime"))]


def test_order_is_parents_before_children() -> None:
    a = tree(directory("a"))
    b = tree(directory("a"), file("a/z"), file("a-b"), file("a.c"))
    assert [c.path for c in diff_trees(a, b)] == ["a/z", "a-b", "a.c"]
