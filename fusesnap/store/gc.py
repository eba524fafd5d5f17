"""Mark and sweep over typed nodes, with no storage code in it.

A node is ``(kind, key)``: ``("image", "docker.io/library/alpine:3.20")``,
``("content", "sha256:…")``, later ``("layer", …)``, ``("snapshot", …)``.
The caller supplies the roots and a ``refs`` function giving a node's
children; `collect` wires these to the store. Keeping the algorithm pure
means it is tested on hand-made graphs, cycles included, without a store.

Worked example: image A -> manifest M1 -> {config C1, layer L}; image B ->
manifest M2 -> {config C2, layer L}. Delete B: marking from A reaches M1,
C1, L; sweeping {M1, M2, C1, C2, L} returns M2 and C2. L stays, A uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

Node = tuple[str, str]


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


def sweep(nodes: Iterable[Node], marked: set[Node]) -> list[Node]:
    """The nodes that are not marked, in the order given."""
    return [node for node in nodes if node not in marked]
