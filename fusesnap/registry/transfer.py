"""Blob transfers: whole small blobs, resumable streamed downloads, range reads, uploads.

`RegistryClient` delegates its blob methods here; see their docstrings there.
Blob bytes are read raw (``Accept-Encoding: identity`` and no decoding): the
digest covers the bytes as stored, even when blob storage labels a gzip layer
``Content-Encoding: gzip``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Protocol

import httpx
import trio

from fusesnap.digest import Digest, Verifier
from fusesnap.errors import DigestMismatchError, RegistryError
from fusesnap.oci import Descriptor
from fusesnap.reference import Reference
from fusesnap.registry._http import iter_raw, read_limited
from fusesnap.registry._session import RegistrySession, where
from fusesnap.registry.hosts import RegistryHost
from fusesnap.registry.retry import RetryableError

log = logging.getLogger(__name__)

_RAW = {"Accept-Encoding": "identity"}
# A slow link hands a download over a few kB per read, and each read costs ~0.15 ms of
# Python (httpx, h11, trio): 1.5 s of CPU for 82 MB at 100 Mbit. After a short read, a
# pause lets the kernel gather a full read's worth (100 Mbit fills 64 KiB in 5 ms; the
# socket buffer holds far more, so the link does not wait).
_SHORT_READ = 32 << 10
_GATHER = 0.004
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


class BlobSink(Protocol):
    """Where `RegistryClient.download_blob` writes (the store's ingest writer).

    ``offset`` is how many bytes it already holds: the download resumes there.
    ``reset()`` discards them (the server would not resume).
    """

    @property
    def offset(self) -> int: ...

    async def write(self, data: bytes) -> None: ...

    async def reset(self) -> None: ...


def _content_range(response: httpx.Response) -> tuple[int, int, int | None] | None:
    m = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if m is None:
        return None
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), int(m.group(2)), total


async def _read_slice(response: httpx.Response, offset: int, length: int) -> bytes:
    """Bytes ``offset`` to ``offset + length`` of a whole body, holding only those in memory."""
    parts: list[bytes] = []
    position = got = 0
    async for chunk in iter_raw(response):
        start = max(offset - position, 0)
        position += len(chunk)
        if start >= len(chunk):
            continue
        piece = chunk[start : start + length - got]
        parts.append(piece)
        got += len(piece)
        if got == length:
            break
    return b"".join(parts)


def _path(ref: Reference, digest: Digest) -> str:
    return f"/v2/{ref.repository}/blobs/{digest}"


async def get_blob(session: RegistrySession, ref: Reference, desc: Descriptor) -> bytes:
    what = f"blob {ref.name}@{desc.digest}"

    async def attempt(host: RegistryHost) -> bytes:
        async with session.open(
            ref, host, "GET", _path(ref, desc.digest), what=what, headers=_RAW
        ) as r:
            # One byte more than promised is enough to know it is too long.
            data = await read_limited(r, desc.size, raw=True)
        # Checked inside the attempt: a mirror that sends other bytes is passed over.
        verifier = Verifier(desc.digest, desc.size)
        verifier.update(data)
        verifier.check(what=f"blob {ref.name}")
        return data

    return await session.run(ref, what, attempt)


async def download_blob(
    session: RegistrySession,
    ref: Reference,
    desc: Descriptor,
    sink: BlobSink,
    progress: Callable[[int], None] | None,
) -> None:
    what = f"blob {ref.name}@{desc.digest}"

    async def attempt(host: RegistryHost) -> None:
        offset = sink.offset
        if offset > desc.size:
            raise DigestMismatchError(
                f"{what}: sink holds {offset} bytes, more than the blob's {desc.size}"
            )
        if offset == desc.size:
            return
        headers = {**_RAW, "Range": f"bytes={offset}-"} if offset else _RAW
        async with session.open(
            ref, host, "GET", _path(ref, desc.digest), what=what, headers=headers, ok=(200, 206)
        ) as r:
            if offset and r.status_code == 200:
                log.debug("%s: server ignored Range; starting over", what)
                await sink.reset()
                offset = 0
            elif r.status_code == 206:
                got = _content_range(r)
                if got is not None and got[0] != offset:
                    raise RegistryError(
                        f"{what}: asked for bytes from {offset}, server sent from {got[0]}"
                    )
            written = offset
            # A mirror is not trusted: a whole blob from one is checked before the
            # operation ends, so that another host can send it if it does not verify.
            # (The sink checks every blob at its end in any case.)
            verifier = Verifier(desc.digest, desc.size) if host.mirror and not offset else None
            async for chunk in iter_raw(r):
                if written + len(chunk) > desc.size:
                    raise DigestMismatchError(
                        f"{what}: server sent more than the blob's {desc.size} bytes"
                    )
                await sink.write(chunk)
                if verifier is not None:
                    verifier.update(chunk)
                written += len(chunk)
                if progress is not None:
                    progress(len(chunk))
                if len(chunk) < _SHORT_READ and written < desc.size:
                    await trio.sleep(_GATHER)
            if written < desc.size:
                # A clean end of a short body is a dropped connection in disguise.
                raise RetryableError(f"body ended after {written} of {desc.size} bytes")
            if verifier is not None:
                try:
                    verifier.check(what=f"blob {ref.name} from {host.name}")
                except DigestMismatchError:
                    await sink.reset()
                    raise

    await session.run(ref, what, attempt)


async def read_range(
    session: RegistrySession, ref: Reference, digest: Digest, offset: int, length: int
) -> bytes:
    if offset < 0 or length < 0:
        raise ValueError(f"invalid range offset={offset} length={length}")
    if length == 0:
        return b""
    end = offset + length - 1
    what = f"blob {ref.name}@{digest} bytes {offset}-{end}"

    async def attempt(host: RegistryHost) -> bytes:
        headers = {**_RAW, "Range": f"bytes={offset}-{end}"}
        async with session.open(
            ref, host, "GET", _path(ref, digest), what=what, headers=headers, ok=(200, 206)
        ) as r:
            if r.status_code == 206:
                got = _content_range(r)
                if got is not None and (got[0], got[1]) != (offset, end):
                    raise RegistryError(
                        f"{where(ref, host)}: {what}: server sent bytes"
                        f" {got[0]}-{got[1]}/{got[2] or '*'}"
                    )
                data = await read_limited(r, length, raw=True)
                if len(data) > length:
                    raise RegistryError(f"{where(ref, host)}: {what}: server sent more than asked")
            else:
                log.debug("%s: server ignored Range (HTTP 200); reading and slicing", what)
                total = r.headers.get("content-length", "")
                if total.isdigit() and int(total) < offset + length:
                    raise RegistryError(f"{where(ref, host)}: {what}: blob has only {total} bytes")
                data = await _read_slice(r, offset, length)
            if len(data) < length:
                raise RetryableError(f"body ended after {len(data)} of {length} bytes")
            return data

    return await session.run(ref, what, attempt)


async def blob_exists(session: RegistrySession, ref: Reference, digest: Digest) -> bool:
    what = f"blob {ref.name}@{digest}"

    async def attempt(host: RegistryHost) -> bool:
        async with session.open(
            ref, host, "HEAD", _path(ref, digest), what=what, ok=(200, 404)
        ) as r:
            return r.status_code == 200

    # Asked before a push: the answer that matters is the one of where the push goes.
    return await session.run(ref, what, attempt, capability="push")


async def put_blob(session: RegistrySession, ref: Reference, data: bytes, digest: Digest) -> None:
    digest = Digest(digest)
    digest.verify(data, what=f"blob {ref.name}")
    what = f"blob upload {ref.name}@{digest}"

    async def attempt(host: RegistryHost) -> None:
        # Both steps in one attempt: a failed PUT leaves an upload session that a
        # retry should not reuse.
        async with session.open(
            ref,
            host,
            "POST",
            f"/v2/{ref.repository}/blobs/uploads/",
            what=what,
            push=True,
            content=b"",
            ok=(202,),
        ) as r:
            location = r.headers.get("location")
            if not location:
                raise RegistryError(f"{where(ref, host)}: {what}: no upload Location")
            upload = r.url.join(location).copy_merge_params({"digest": str(digest)})
        async with session.open(
            ref,
            host,
            "PUT",
            str(upload),
            what=what,
            push=True,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            ok=(201, 204),
        ):
            pass

    await session.run(ref, what, attempt, capability="push")
