"""Image references: ``[registry[:port]/]repository[:tag][@digest]``.

Docker's defaults apply: a reference without a registry is on ``docker.io``,
a one-component repository there is under ``library/``, and a reference with
neither tag nor digest means ``:latest``::

    busybox                         -> docker.io/library/busybox:latest
    127.0.0.1:5000/debian:12        -> registry 127.0.0.1:5000, repository debian, tag 12
    ghcr.io/a/b@sha256:<hex>        -> pinned by digest
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from fusesnap.digest import Digest
from fusesnap.errors import InvalidDigestError, InvalidReferenceError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"

_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_HOST = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$"
)


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        """Parse and normalize ``text``; raise `InvalidReferenceError` if it is malformed."""
        original = text
        if not text or text != text.strip() or len(text) > 4096:
            raise InvalidReferenceError(f"invalid reference {original!r}")
        digest: Digest | None = None
        if "@" in text:
            text, _, digest_text = text.partition("@")
            try:
                digest = Digest(digest_text)
            except InvalidDigestError as exc:
                raise InvalidReferenceError(f"invalid reference {original!r}: {exc}") from None
        registry, _, rest = text.partition("/")
        if rest and (
            "." in registry
            or ":" in registry
            or registry == "localhost"
            or registry.startswith("[")
        ):
            if not _HOST.match(registry):
                raise InvalidReferenceError(f"invalid reference {original!r}: bad registry host")
        else:
            registry, rest = DEFAULT_REGISTRY, text
        tag: str | None = None
        last_slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > last_slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG.match(tag):
                raise InvalidReferenceError(f"invalid reference {original!r}: bad tag {tag!r}")
        components = rest.split("/")
        for comp in components:
            if not _COMPONENT.match(comp):
                why = (
                    "must be lowercase" if comp.lower() != comp else f"bad name component {comp!r}"
                )
                raise InvalidReferenceError(f"invalid reference {original!r}: {why}")
        if registry == "index.docker.io":
            registry = DEFAULT_REGISTRY
        if registry == DEFAULT_REGISTRY and len(components) == 1:
            rest = f"library/{rest}"
        if len(registry) + 1 + len(rest) > 255:
            raise InvalidReferenceError(f"invalid reference {original!r}: name too long")
        if tag is None and digest is None:
            tag = DEFAULT_TAG
        return cls(registry=registry, repository=rest, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host:port the Distribution API is served on."""
        return "registry-1.docker.io" if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def object(self) -> str:
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        return str(self.digest) if self.digest else str(self.tag)

    def with_digest(self, digest: Digest) -> Reference:
        return Reference(self.registry, self.repository, self.tag, digest)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    if host.startswith("["):
        name = host[1 : host.index("]")]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
