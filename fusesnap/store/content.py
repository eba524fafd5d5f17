"""The content store: immutable blobs addressed by digest (containerd's
content service).

Only verified bytes get in: `put` hashes before it writes, and a
`ContentWriter` (see `ingest`) hashes as bytes arrive and again while it
copies them in. Blobs are never modified, only deleted — by `delete` or the
garbage collector — so a reader that found a digest can trust its bytes.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator

from fusesnap.digest import Digest
from fusesnap.store import blobs
from fusesnap.store.env import Env
from fusesnap.store.ingest import ContentWriter, list_ingests, remove_ingest
from fusesnap.store.records import ContentInfo, IngestInfo
from fusesnap.store.schema import CONTENT, SEGMENT_SIZE, unpack

DEFAULT_WRITER_WAIT = 1.0


class ContentStore:
    """Read, list, add and delete blobs; ingest downloads."""

    def __init__(self, env: Env) -> None:
        self._env = env

    def info(self, digest: Digest) -> ContentInfo:
        """Raise `NotFoundError` if the blob is not stored."""
        digest = Digest(digest)
        with self._env.txn() as txn:
            return blobs.require_info(txn, self._env, digest)

    def exists(self, digest: Digest) -> bool:
        digest = Digest(digest)
        with self._env.txn() as txn:
            return blobs.get_info(txn, self._env, digest) is not None

    def read(self, digest: Digest) -> bytes:
        """The whole blob, for manifests and configs (it is held in memory)."""
        digest = Digest(digest)
        with self._env.txn() as txn:
            return blobs.read_all(txn, self._env, blobs.require_info(txn, self._env, digest))

    def read_at(self, digest: Digest, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``, like ``pread``: short at the end
        of the blob, empty past it. One read transaction, whatever the number
        of segments it spans."""
        if offset < 0 or size < 0:
            raise ValueError(f"invalid range: offset={offset} size={size}")
        digest = Digest(digest)
        with self._env.txn(buffers=True) as txn:
            info = blobs.require_info(txn, self._env, digest)
            return blobs.read_range(txn, self._env, info, offset, size)

    def iter_bytes(self, digest: Digest, *, start: int = 0) -> Iterator[bytes]:
        """Stream the blob from ``start``, one segment (<= 1 MiB) at a time.

        `NotFoundError` is raised here, before iterating. Each segment is read
        in its own short transaction: a stream may be consumed slowly, or from
        several threads in turn, and an open read transaction would pin its
        snapshot for that long (LMDB cannot reuse pages freed after it, so
        the file grows under concurrent writers). Blobs are immutable, so
        the pieces still form one blob; if the blob is deleted mid-stream the
        iterator raises `NotFoundError`.
        """
        if start < 0:
            raise ValueError(f"invalid start {start}")
        info = self.info(digest)
        return self._iter_segments(info, start)

    def _iter_segments(self, info: ContentInfo, start: int) -> Iterator[bytes]:
        for n in range(start // SEGMENT_SIZE, info.segments):
            skip = start - n * SEGMENT_SIZE if n * SEGMENT_SIZE < start else 0
            with self._env.txn(buffers=True) as txn:
                if blobs.get_info(txn, self._env, info.digest) is None:
                    raise blobs.not_found(info.digest)
                piece = bytes(blobs.get_segment(txn, self._env, info, n)[skip:])
            yield piece

    def list(self) -> Iterator[ContentInfo]:
        """Every blob, in digest order (read in batches, not one snapshot)."""
        for _key, raw in self._env.iter_items(CONTENT):
            yield ContentInfo.from_record(unpack(raw))

    def put(
        self,
        data: bytes,
        *,
        digest: Digest,
        media_type: str,
        labels: dict[str, str] | None = None,
    ) -> ContentInfo:
        """Store a small blob held in memory. The digest is checked before
        anything is written (`DigestMismatchError`, nothing stored). Storing
        a blob that is already there returns its existing info."""
        digest = Digest(digest)
        digest.verify(data)
        view = memoryview(data)
        with self._env.txn(write=True) as txn:
            existing = blobs.get_info(txn, self._env, digest)
            if existing is not None:
                return existing
            return blobs.put_blob(
                txn,
                self._env,
                digest,
                (view[i : i + SEGMENT_SIZE] for i in range(0, len(view), SEGMENT_SIZE)),
                media_type=media_type,
                labels=labels,
                verify=False,
            )

    def delete(self, digest: Digest) -> ContentInfo:
        """Remove info and segments in one transaction; return what was removed."""
        digest = Digest(digest)
        with self._env.txn(write=True) as txn:
            info = blobs.delete_blob(txn, self._env, digest)
        if info is None:
            raise blobs.not_found(digest)
        return info

    def writer(
        self,
        digest: Digest,
        *,
        size: int | None,
        media_type: str,
        wait: float = DEFAULT_WRITER_WAIT,
    ) -> ContentWriter:
        """Open (or resume) the ingest of ``digest``; see `ContentWriter`.

        Raise `AlreadyExistsError` if another writer, in this process or any
        other, still holds this digest's ingest after ``wait`` seconds. The
        short default rides out gc peeking at the file; a real concurrent
        pull holds it for its whole download.

        Call `exists` first: the writer does not check the store.
        """
        return ContentWriter(self._env, Digest(digest), size=size, media_type=media_type, wait=wait)

    def ingests(self) -> builtins.list[IngestInfo]:
        """Partial downloads, in digest order."""
        return list_ingests(self._env)

    def remove_ingest(self, digest: Digest) -> None:
        """Delete a partial download. `AlreadyExistsError` if a writer holds
        it (it is in use), `NotFoundError` if there is none."""
        remove_ingest(self._env, Digest(digest))
