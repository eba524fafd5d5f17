"""A Distribution registry's access log (the combined log format), read back."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["AccessRecord", "parse_access_log"]

_LINE = re.compile(
    r'^\S+ - \S+ \[[^\]]*\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) '
    r'\S+ "[^"]*" "(?P<agent>[^"]*)"$',
    re.MULTILINE,
)


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One request from a registry's access log."""

    method: str
    path: str  # with the query string
    status: int
    agent: str  # the User-Agent


def parse_access_log(text: str) -> list[AccessRecord]:
    """The access lines of ``text`` (a registry log, other lines mixed in), in order."""
    return [
        AccessRecord(m["method"], m["path"], int(m["status"]), m["agent"])
        for m in _LINE.finditer(text)
    ]
