"""`Entry` and `ChunkRef` records built at a plain class's speed, for the decoders.

A mount's start decodes every entry of every layer index (thousands per layer),
and a TOC read builds as many. The records are frozen dataclasses, whose
generated ``__init__`` sets each field through ``object.__setattr__``: about
2 µs for an `Entry`'s fifteen fields, a quarter of a whole row's decode.

`new_entry` and `new_chunk_ref` build the same records through a *twin*: an
unfrozen slotted dataclass with the very same fields, hence the very same slot
layout, whose instance then becomes the frozen class's by ``__class__``
assignment (which CPython allows between classes of identical layout). The
result is an ordinary frozen `Entry` or `ChunkRef`: equal to, hashing like and
as immutable as one made by its constructor. Arguments are positional, in field
order, with the constructor's defaults; nothing is checked beyond what the
constructor checks (nothing): callers have checked every value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

from fusesnap.index.model import ChunkRef, Entry

__all__ = ["new_chunk_ref", "new_entry"]

_T = TypeVar("_T")


def _twin_builder(cls: type[_T]) -> Callable[..., _T]:
    """A builder of frozen slotted dataclass ``cls`` instances (module docstring)."""
    assert dataclasses.is_dataclass(cls)
    twin: Any = dataclasses.make_dataclass(
        f"_{cls.__name__}Twin",
        [
            (
                f.name,
                f.type,
                dataclasses.field(
                    default=f.default, default_factory=f.default_factory, init=f.init
                ),
            )
            for f in dataclasses.fields(cls)
        ],
        slots=True,
        eq=False,
        repr=False,
    )
    if twin.__slots__ != getattr(cls, "__slots__", None):  # a dataclass layout change
        raise TypeError(f"{cls.__name__}: its twin's slots differ")

    def build(*args: Any) -> _T:
        obj = twin(*args)
        obj.__class__ = cls
        return obj

    build.__name__ = f"new_{cls.__name__.lower()}"
    return build


new_entry: Callable[..., Entry] = _twin_builder(Entry)
new_chunk_ref: Callable[..., ChunkRef] = _twin_builder(ChunkRef)
