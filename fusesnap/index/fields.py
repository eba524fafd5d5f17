"""Typed reads of untrusted msgpack arrays: each field checked, errors naming the record."""

from __future__ import annotations

import re
from typing import Any

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError

__all__ = ["Corrupt", "Fields"]

PRINTABLE = re.compile(r"^[\x20-\x7e]{0,255}$")


class Corrupt(Exception):
    """A decoded structure is not what the format allows (the caller adds what it was)."""


class Fields:
    """Pull typed fields off one msgpack array, naming the record in errors."""

    def __init__(self, value: Any, n: int, what: str) -> None:
        if not isinstance(value, list) or len(value) != n:
            raise Corrupt(f"{what}: want an array of {n}")
        self._it = iter(value)
        self._what = what

    def any(self) -> Any:
        return next(self._it)

    def integer(self) -> int:
        v = next(self._it)
        if not isinstance(v, int) or isinstance(v, bool):
            raise Corrupt(f"{self._what}: want an integer, got {type(v).__name__}")
        return v

    def uint(self) -> int:
        v = self.integer()
        if v < 0:
            raise Corrupt(f"{self._what}: negative value")
        return v

    def blob(self) -> bytes:
        v = next(self._it)
        if not isinstance(v, bytes):
            raise Corrupt(f"{self._what}: want bytes, got {type(v).__name__}")
        return v

    def text(self) -> str:
        v = next(self._it)
        if not isinstance(v, str) or not PRINTABLE.match(v):
            raise Corrupt(f"{self._what}: want a short printable string")
        return v

    def array(self) -> list[Any]:
        v = next(self._it)
        if not isinstance(v, list):
            raise Corrupt(f"{self._what}: want an array")
        return v

    def digest(self) -> Digest:
        try:
            return Digest(self.text())
        except InvalidDigestError as exc:
            raise Corrupt(str(exc)) from None
