"""Mark and sweep over typed nodes, with no storage code in it.

A node is ``(kind, key)``: ``("image", "docker.io/library/alpine:3.20")``,
``("content", "sha256:…")``, later ``("layer", …)``, ``("snapshot", …)``.
The caller supplies the roots and a ``refs`` function giving a node's
children; `collect` wires these to the store. Keeping the algorithm pure
means it is tested on hand-made graphs, cycles included, without a store.

Worked example: image A -> manifest M1 -> {config C1, layer L}; image B ->
manifest M2 -> {config C2, layer L}. Delete B: marking from A reaches M1,
C1, L; sweeping {M1, M2, C1, C2, L} returns M2 and C2. L stays, A uses it.

Leaves. Some links end the graph and come by the hundred thousand: a layer
lists every chunk its files are made of, and a chunk links to nothing. A
tuple per chunk would cost ~100 bytes and a hash of a str each, so chunks
are not nodes: `mark_leaves` collects the leaf keys (raw 32-byte digests)
of the marked nodes into one flat set, which `sweep` takes as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Set
from typing import TypeVar

Node = tuple[str, str]
K = TypeVar("K")


def mark(roots: Iterable[Node], refs: Callable[[Node], Iterable[Node]]) -> set[Node]:
    """Every node reachable from ``roots`` (roots included).

    Tricolor, iteratively: a node is grey once discovered (in ``marked``,
    on the stack), black once its children are pushed. An explicit stack
    instead of recursion, so a chain a million long does not hit Python's
    recursion limit; the marked set makes cycles terminate. ``refs`` is
    called once per reachable node.
    """
    marked: set[Node] = set()
    stack: list[Node] = []
    for root in roots:
        if root not in marked:
            marked.add(root)
            stack.append(root)
    while stack:
        node = stack.pop()
        for child in refs(node):
            if child not in marked:
                marked.add(child)
                stack.append(child)
    return marked


def mark_leaves(
    nodes: Iterable[Node], leaves: Callable[[Node], Iterable[K]], marked: set[K]
) -> set[K]:
    """Add the leaves of ``nodes`` (marked nodes, typically) to ``marked``
    and return it. Passing the same set again makes marking incremental:
    ``leaves`` may return nothing for a node whose leaves are already in."""
    for node in nodes:
        marked.update(leaves(node))
    return marked


def sweep(nodes: Iterable[K], marked: Set[K]) -> list[K]:
    """The nodes (or leaves) that are not marked, in the order given."""
    return [node for node in nodes if node not in marked]
