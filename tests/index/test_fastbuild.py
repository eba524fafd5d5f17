"""The fast builders make the very records the constructors make."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from fusesnap.index.fastbuild import new_chunk_ref, new_entry
from fusesnap.index.model import ChunkRef, Entry, EntryType


def _entry_args(chunks: tuple[ChunkRef, ...]) -> tuple[object, ...]:
    return (
        "usr/bin/x",
        EntryType.FILE,
        0o755,
        1,
        2,
        10,
        1_700_000_000,
        5,
        "",
        0,
        0,
        {"user.a": b"1"},
        "u",
        "g",
        chunks,
    )


def test_a_built_entry_is_the_constructors_entry() -> None:
    ref = new_chunk_ref(0, 10, b"d" * 32, 7, 3, 1)
    assert type(ref) is ChunkRef
    assert ref == ChunkRef(0, 10, b"d" * 32, 7, 3, 1)
    assert ref.framed
    assert new_chunk_ref(0, 10, b"d" * 32) == ChunkRef(0, 10, b"d" * 32)
    assert new_chunk_ref(0, 10, b"d" * 32).coffset == -1  # the defaults
    built, made = new_entry(*_entry_args((ref,))), Entry(*_entry_args((ref,)))  # type: ignore[arg-type]
    assert type(built) is Entry
    assert built == made
    assert hash(built) == hash(made)
    assert built.chunk_starts == (0,)  # the field without init starts at its default
    assert pickle.loads(pickle.dumps(built)) == made


def test_a_built_entry_is_frozen() -> None:
    built = new_entry("a", EntryType.DIR)
    assert built == Entry("a", EntryType.DIR)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.path = "b"  # type: ignore[misc]
    assert built.path == "a"
