"""A blob's bytes in and out of LMDB segments, inside a caller's transaction.

These functions take an open transaction so that the content store, the
ingest commit and the garbage collector can each compose them into one
transaction of their own: a blob's `ContentInfo` and its segments are only
ever written or deleted together, so no reader (and no crash) can observe
one without the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeAlias

import lmdb

from fusesnap.digest import Digest, Verifier
from fusesnap.errors import NotFoundError, StoreError
from fusesnap.store.env import Env
from fusesnap.store.records import ContentInfo
from fusesnap.store.schema import (
    BLOBS,
    CONTENT,
    SEGMENT_SIZE,
    blob_key,
    blob_prefix,
    content_key,
    delete_prefix,
    pack,
    unpack,
)

# A string: the C class is not subscriptable at run time.
Txn: TypeAlias = "lmdb.Transaction[Any]"


def not_found(digest: Digest) -> NotFoundError:
    return NotFoundError(f"content {digest.short}: not found")


def get_info(txn: Txn, env: Env, digest: Digest) -> ContentInfo | None:
    raw = txn.get(content_key(digest), db=env.db(CONTENT))
    return None if raw is None else ContentInfo.from_record(unpack(bytes(raw)))


def require_info(txn: Txn, env: Env, digest: Digest) -> ContentInfo:
    info = get_info(txn, env, digest)
    if info is None:
        raise not_found(digest)
    return info


def get_segment(txn: Txn, env: Env, info: ContentInfo, n: int) -> Any:
    """Segment ``n`` (bytes, or a memoryview in a buffers txn)."""
    seg = txn.get(blob_key(info.digest, n), db=env.db(BLOBS))
    if seg is None:
        raise StoreError(f"content {info.digest.short}: segment {n} missing (store corrupt)")
    return seg


def read_all(txn: Txn, env: Env, info: ContentInfo) -> bytes:
    data = b"".join(bytes(get_segment(txn, env, info, n)) for n in range(info.segments))
    if len(data) != info.size:
        raise StoreError(
            f"content {info.digest.short}: {len(data)} bytes stored, "
            f"{info.size} recorded (store corrupt)"
        )
    return data


def read_range(txn: Txn, env: Env, info: ContentInfo, offset: int, size: int) -> bytes:
    """Up to ``size`` bytes at ``offset``; short only at the end of the blob."""
    end = min(offset + size, info.size)
    if offset >= end:
        return b""
    parts = []
    for n in range(offset // SEGMENT_SIZE, (end - 1) // SEGMENT_SIZE + 1):
        base = n * SEGMENT_SIZE
        seg = get_segment(txn, env, info, n)
        parts.append(bytes(seg[max(offset - base, 0) : min(end - base, len(seg))]))
    return b"".join(parts)


def put_blob(
    txn: Txn,
    env: Env,
    digest: Digest,
    segments: Iterable[Any],
    *,
    media_type: str,
    labels: dict[str, str] | None = None,
    verify: bool = True,
) -> ContentInfo:
    """Write segments and info; raise `DigestMismatchError` (the caller's
    transaction then aborts, storing nothing) if ``verify`` and the bytes
    written do not hash to ``digest``.

    ``segments`` must be `SEGMENT_SIZE` long except the last.
    """
    verifier = Verifier(digest)
    blobs = env.db(BLOBS)
    count = size = 0
    for seg in segments:
        if len(seg) == 0:
            continue
        if size % SEGMENT_SIZE:
            raise ValueError("only the last segment may be shorter than SEGMENT_SIZE")
        if verify:
            verifier.update(seg)
        txn.put(blob_key(digest, count), seg, db=blobs)
        count += 1
        size += len(seg)
    if verify:
        verifier.check(what="content")
    info = ContentInfo(
        digest=digest,
        size=size,
        media_type=media_type,
        created=time.time(),
        segments=count,
        labels=dict(labels or {}),
    )
    txn.put(content_key(digest), pack(info.to_record()), db=env.db(CONTENT))
    return info


def delete_blob(txn: Txn, env: Env, digest: Digest) -> ContentInfo | None:
    """Delete info and every segment; `None` if the blob was not there."""
    info = get_info(txn, env, digest)
    if info is None:
        return None
    txn.delete(content_key(digest), db=env.db(CONTENT))
    # By prefix rather than range(info.segments): also removes segments a
    # corrupt info would not account for.
    delete_prefix(txn, env.db(BLOBS), blob_prefix(digest))
    return info


def iter_infos(txn: Txn, env: Env) -> Iterator[ContentInfo]:
    """Every blob's info, within one transaction."""
    for _key, raw in txn.cursor(db=env.db(CONTENT)):
        yield ContentInfo.from_record(unpack(bytes(raw)))
