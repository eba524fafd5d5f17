"""One LMDB database of records, read the same way by every store built on it."""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Generic

from fusesnap.errors import NotFoundError
from fusesnap.store.env import Env
from fusesnap.store.records import R, get_record
from fusesnap.store.schema import unpack

__all__ = ["RecordTable"]


class RecordTable(Generic[R]):
    """`get`, `exists` and `list` over database ``db`` of ``cls`` records, keyed by
    ``key(name)``; ``what`` names a record in errors (``image NAME: not found``)."""

    def __init__(
        self, env: Env, db: bytes, cls: type[R], key: Callable[[str], bytes], what: str
    ) -> None:
        self._env = env
        self._table = (db, cls, key, what)

    def _not_found(self, name: str) -> NotFoundError:
        return NotFoundError(f"{self._table[3]} {name}: not found")

    def _get(self, name: str) -> R | None:
        db, cls, key, _ = self._table
        with self._env.txn() as txn:
            return get_record(txn, self._env.db(db), key(name), cls)

    def get(self, name: str) -> R:
        record = self._get(name)
        if record is None:
            raise self._not_found(name)
        return record

    def exists(self, name: str) -> bool:
        return self._get(name) is not None

    def list(self) -> builtins.list[R]:
        """Every record, in key order."""
        db, cls, _, _ = self._table
        return [cls.from_record(unpack(raw)) for _k, raw in self._env.iter_items(db)]
