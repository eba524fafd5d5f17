"""Content digests (``sha256:<64 hex>``), validated once where they enter."""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

from fusesnap.errors import DigestMismatchError, InvalidDigestError

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_PATTERN = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-f0-9]+)$")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


class Digest(str):
    """A validated digest string such as ``sha256:e3b0…``.

    It is a `str`, so it serializes, compares and hashes like one; constructing
    it validates the algorithm and the hex length.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if isinstance(value, Digest):
            return value
        m = _PATTERN.match(value) if isinstance(value, str) else None
        if m is None:
            raise InvalidDigestError(f"invalid digest {value!r}: want algorithm:hex")
        algorithm, hexpart = m.groups()
        want = _HEX_LENGTH.get(algorithm)
        if want is None:
            raise InvalidDigestError(f"invalid digest {value!r}: unsupported algorithm")
        if len(hexpart) != want:
            raise InvalidDigestError(f"invalid digest {value!r}: want {want} hex digits")
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.partition(":")[0]

    @property
    def hex(self) -> str:
        return self.partition(":")[2]

    @property
    def short(self) -> str:
        """``sha256:ab12cd34ef56`` for messages and tables."""
        return self[: len(self.algorithm) + 13]

    def hasher(self) -> Hasher:
        return hashlib.new(self.algorithm)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}")

    def verify(self, data: bytes, *, what: str = "content") -> None:
        """Raise `DigestMismatchError` unless ``data`` hashes to this digest."""
        h = self.hasher()
        h.update(data)
        got = f"{self.algorithm}:{h.hexdigest()}"
        if got != self:
            raise DigestMismatchError(f"{what} {self.short}: digest mismatch (got {got[:19]})")


class Verifier:
    """Hash bytes as they stream past and check digest and size at the end."""

    def __init__(self, digest: Digest, size: int | None = None) -> None:
        self.digest = digest
        self.size = size
        self.count = 0
        self._hasher = digest.hasher()

    def update(self, data: bytes) -> None:
        self._hasher.update(data)
        self.count += len(data)

    def check(self, *, what: str = "content") -> None:
        if self.size is not None and self.count != self.size:
            raise DigestMismatchError(
                f"{what} {self.digest.short}: size mismatch (got {self.count}, want {self.size})"
            )
        got = f"{self.digest.algorithm}:{self._hasher.hexdigest()}"
        if got != self.digest:
            raise DigestMismatchError(
                f"{what} {self.digest.short}: digest mismatch (got {got[:19]})"
            )
