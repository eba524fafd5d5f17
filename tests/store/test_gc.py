"""The pure mark/sweep on hand-made graphs."""

from __future__ import annotations

from collections import Counter

from fusesnap.store.gc import Node, mark, mark_leaves, sweep


def graph(edges: dict[str, list[str]]):
    calls: Counter[Node] = Counter()

    def refs(node: Node) -> list[Node]:
        calls[node] += 1
        return [("n", child) for child in edges.get(node[1], [])]

    return refs, calls


def n(*names: str) -> set[Node]:
    return {("n", x) for x in names}


def test_reachable_and_unreachable_chains() -> None:
    refs, _ = graph({"a": ["b"], "b": ["c"], "x": ["y"], "y": ["z"]})
    marked = mark([("n", "a")], refs)
    assert marked == n("a", "b", "c")
    everything = [("n", k) for k in "abcxyz"]
    assert sweep(everything, marked) == [("n", "x"), ("n", "y"), ("n", "z")]


def test_cycles_terminate_and_each_node_is_scanned_once() -> None:
    refs, calls = graph({"a": ["b"], "b": ["c", "a"], "c": ["a", "c"], "d": ["d"]})
    marked = mark([("n", "a"), ("n", "a")], refs)
    assert marked == n("a", "b", "c")
    assert set(calls.values()) == {1}
    assert sweep([("n", "d")], marked) == [("n", "d")]


def test_shared_children() -> None:
    # two images, one shared layer; drop image 2's root
    refs, _ = graph({"img1": ["m1"], "img2": ["m2"], "m1": ["c1", "L"], "m2": ["c2", "L"]})
    all_nodes = [("n", k) for k in ("img1", "img2", "m1", "m2", "c1", "c2", "L")]
    assert sweep(all_nodes, mark([("n", "img1"), ("n", "img2")], refs)) == []
    assert sweep(all_nodes, mark([("n", "img1")], refs)) == [
        ("n", "img2"),
        ("n", "m2"),
        ("n", "c2"),
    ]


def test_typed_nodes_do_not_collide() -> None:
    def refs(node: Node) -> list[Node]:
        return [("content", "x")] if node == ("image", "x") else []

    marked = mark([("image", "x")], refs)
    assert marked == {("image", "x"), ("content", "x")}
    assert sweep([("layer", "x"), ("content", "x")], marked) == [("layer", "x")]


def test_deep_chain_needs_no_recursion() -> None:
    depth = 200_000

    def refs(node: Node) -> list[Node]:
        i = int(node[1])
        return [("n", str(i + 1))] if i < depth else []

    assert len(mark([("n", "0")], refs)) == depth + 1


def test_no_roots() -> None:
    assert mark([], lambda node: []) == set()
    assert sweep([("n", "a")], set()) == [("n", "a")]


def test_leaves_are_marked_into_one_flat_set() -> None:
    refs, _ = graph({"img": ["m"], "m": ["L1", "L2"]})
    leaves = {"L1": [b"a", b"b"], "L2": [b"b", b"c"], "L3": [b"d"]}
    seen: list[Node] = []

    def leaves_of(node: Node) -> list[bytes]:
        seen.append(node)
        return leaves.get(node[1], [])

    nodes = mark([("n", "img")], refs)
    marked: set[bytes] = set()
    assert mark_leaves(sorted(nodes), leaves_of, marked) is marked
    assert marked == {b"a", b"b", b"c"}
    assert sweep([b"a", b"d", b"c", b"e"], marked) == [b"d", b"e"]
    # Incremental: the same set grows, nothing is forgotten.
    mark_leaves([("n", "L3")], leaves_of, marked)
    assert marked == {b"a", b"b", b"c", b"d"}
    assert ("n", "L3") in seen
