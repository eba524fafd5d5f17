"""containerd's filter syntax, the part that snapshot listings use.

A filter is a comma-separated list of terms that must all hold; a listing
keeps what matches any of its filters (all of it, given none). A term is a
field path, optionally an operator and a value::

    name==default/3/sha256:ab...        kind==committed
    parent=="default/2/sha256:cd..."    labels."containerd.io/snapshot.ref"==sha256:ef...
    labels.fusesnap                     (the label is set)
    name~=^default/                     (a regular expression)
    name!=foo

Fields: ``name``, ``parent``, ``kind`` and ``labels.KEY`` (KEY quoted when it
has dots or other punctuation). Values are quoted ("..." with backslash
escapes, or '...') or run up to the next comma. containerd itself sends
``labels."containerd.io/snapshot.ref"==TARGET,parent=="PARENT"`` to find the
snapshot a remote snapshotter committed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fusesnap.errors import FusesnapError
from fusesnap.store import SnapshotRecord

__all__ = ["FilterError", "Term", "matches", "parse_filter", "parse_filters"]

_IDENT = re.compile(r"[A-Za-z0-9_]+")
_OPERATORS = ("==", "!=", "~=")


class FilterError(FusesnapError):
    """A filter that does not parse."""


@dataclass(frozen=True, slots=True)
class Term:
    path: tuple[str, ...]
    op: str  # "" (present), "==", "!=", "~="
    value: str = ""

    def holds(self, record: SnapshotRecord) -> bool:
        field = _field(record, self.path)
        if self.op == "":
            return field is not None
        if self.op == "~=":
            return field is not None and re.search(self.value, field) is not None
        equal = field == self.value
        return equal if self.op == "==" else not equal


def _field(record: SnapshotRecord, path: tuple[str, ...]) -> str | None:
    match path:
        case ("name",):
            return record.key
        case ("parent",):
            return record.parent or ""
        case ("kind",):
            return record.kind
        case ("labels", key):
            return record.labels.get(key)
    return None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, what: str) -> FilterError:
        return FilterError(f"filter {self.text!r}: {what} at offset {self.pos}")

    def peek(self, s: str) -> bool:
        return self.text.startswith(s, self.pos)

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def quoted(self) -> str:
        quote = self.text[self.pos]
        out: list[str] = []
        self.pos += 1
        while not self.done():
            c = self.text[self.pos]
            self.pos += 1
            if c == quote:
                return "".join(out)
            if c == "\\" and quote == '"' and not self.done():
                c = self.text[self.pos]
                self.pos += 1
            out.append(c)
        raise self.fail("unterminated quote")

    def segment(self) -> str:
        if not self.done() and self.text[self.pos] in "\"'":
            return self.quoted()
        m = _IDENT.match(self.text, self.pos)
        if m is None:
            raise self.fail("expected a field name")
        self.pos = m.end()
        return m.group()

    def value(self) -> str:
        if not self.done() and self.text[self.pos] in "\"'":
            return self.quoted()
        end = self.text.find(",", self.pos)
        end = len(self.text) if end < 0 else end
        value, self.pos = self.text[self.pos : end], end
        return value


def parse_filter(text: str) -> list[Term]:
    """The terms of one filter; `FilterError` if it does not parse or names an unknown
    field."""
    scan = _Scanner(text.strip())
    terms: list[Term] = []
    while True:
        path = [scan.segment()]
        while scan.peek("."):
            scan.pos += 1
            path.append(scan.segment())
        if path[0] not in ("name", "parent", "kind", "labels") or (
            len(path) != (2 if path[0] == "labels" else 1)
        ):
            raise FilterError(f"filter {text!r}: unknown field {'.'.join(path)!r}")
        op = next((o for o in _OPERATORS if scan.peek(o)), "")
        value = ""
        if op:
            scan.pos += len(op)
            value = scan.value()
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise FilterError(f"filter {text!r}: bad expression: {exc}") from None
        terms.append(Term(tuple(path), op, value))
        if scan.done():
            return terms
        if not scan.peek(","):
            raise scan.fail("expected ',' or an operator")
        scan.pos += 1


def parse_filters(texts: Iterable[str]) -> list[list[Term]]:
    return [parse_filter(t) for t in texts if t.strip()]


def matches(filters: Sequence[Sequence[Term]], record: SnapshotRecord) -> bool:
    """Does ``record`` pass any of ``filters`` (every record, given none)?"""
    return not filters or any(all(t.holds(record) for t in terms) for terms in filters)
