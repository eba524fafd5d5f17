from __future__ import annotations

import pytest

from fusesnap.digest import Digest
from fusesnap.errors import InvalidReferenceError
from fusesnap.reference import Reference, is_loopback

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("user/app", "docker.io", "user/app", "latest", None),
        ("index.docker.io/library/debian:12", "docker.io", "library/debian", "12", None),
        ("127.0.0.1:5000/debian:12", "127.0.0.1:5000", "debian", "12", None),
        ("localhost/a/b", "localhost", "a/b", "latest", None),
        ("ghcr.io/o/r/img:v1.2-rc_3", "ghcr.io", "o/r/img", "v1.2-rc_3", None),
        (f"quay.io/x/y@sha256:{HEX}", "quay.io", "x/y", None, f"sha256:{HEX}"),
        (f"quay.io/x/y:t@sha256:{HEX}", "quay.io", "x/y", "t", f"sha256:{HEX}"),
        ("[::1]:5000/img", "[::1]:5000", "img", "latest", None),
        ("a__b/c-d.e", "docker.io", "a__b/c-d.e", "latest", None),
    ],
)
def test_parse_normalizes(text, registry, repository, tag, digest) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "Busybox",
        "a//b",
        "a/b:",
        "a:b:c",
        "a@sha256:abc",
        f"a@md5:{HEX}",
        "-a",
        "a/-b",
        "host:port/x",
        "a/b:" + "t" * 129,
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid reference"):
        Reference.parse(text)


def test_api_host_and_object() -> None:
    assert Reference.parse("busybox").api_host == "registry-1.docker.io"
    assert Reference.parse("busybox").object == "latest"
    pinned = Reference.parse(f"r.io/x@sha256:{HEX}")
    assert pinned.object == f"sha256:{HEX}"
    assert isinstance(pinned.digest, Digest)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost:5000", True),
        ("127.0.0.1", True),
        ("127.9.9.9:80", True),
        ("[::1]:5000", True),
        ("10.0.0.1:5000", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected
