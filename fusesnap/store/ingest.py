"""Ingests: downloads in progress, as files under ``ROOT/ingest/``, that
become content only once their digest checks out.

A download goes to a partial file named after its digest, not into LMDB, so
that (1) a pull killed half-way can resume with an HTTP Range request from
what is already on disk, and (2) unverified bytes never enter the store.
`ContentWriter.commit` copies the file into LMDB in one write transaction.

Layers take the other way out. Copying a 300 MB layer into LMDB would hold
the writer lock, and ~300 MB of dirty pages, for one transaction; and the
store keeps layers as an index plus shared chunks anyway (see `layers`). So
a pull downloads a layer to a writer as usual, then:

    path = writer.verified_path()     # size + digest checked; still locked
    ... build the index reading `path`; store chunks with
        ChunkStore.put_many (batches of ~8-32 MiB); LayerStore.put(record)
    writer.abort()                    # the partial file is no longer needed

If the pull dies before `abort`, the partial file stays and the next pull
resumes (or finds it complete) under its ingest lease, like any download.

Concurrency. A writer holds an exclusive ``flock`` on its partial file for
as long as it is open; flock (not fcntl) locks belong to the open file, so
two writers conflict even inside one process. A second writer for the same
digest waits up to ``wait`` seconds, then raises `AlreadyExistsError`: a
caller that gets it should wait for the other pull (poll
`ContentStore.exists`) rather than download the same bytes twice. Whoever
deletes a partial file (commit, abort, gc) does so while holding the lock,
and a writer that wins the lock checks that its file is still the one at the
path, so a file unlinked under it is never written to.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from fusesnap.digest import Digest, Verifier
from fusesnap.errors import AlreadyExistsError, DigestMismatchError, NotFoundError, StoreError
from fusesnap.store import blobs
from fusesnap.store.env import Closing, Env
from fusesnap.store.records import ContentInfo, IngestInfo
from fusesnap.store.schema import SEGMENT_SIZE, decode_ingest_name, ingest_name

_POLL = 0.02


def _locked_error(digest: Digest) -> AlreadyExistsError:
    return AlreadyExistsError(f"ingest {digest.short}: locked by another writer")


def _os_error(digest: Digest, exc: OSError) -> StoreError:
    return StoreError(f"ingest {digest.short}: {exc.strerror or exc}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _lock(path: Path, digest: Digest, *, create: bool, wait: float) -> int | None:
    """An fd on ``path`` holding its exclusive flock; `None` if ``not create``
    and there is no file. Raise `AlreadyExistsError` if still locked after
    ``wait`` seconds."""
    deadline = time.monotonic() + wait
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    while True:
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() >= deadline:
                raise _locked_error(digest) from None
            time.sleep(_POLL)
            continue
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            return fd
        # The previous holder unlinked it between our open and our flock.
        os.close(fd)
        if not create:
            return None


class ContentWriter(Closing):
    """Writes one blob to a partial file; `commit` verifies and stores it,
    `verified_path` verifies it and leaves it to be read (layers).

    Opening a writer for a digest whose partial file exists resumes it: the
    bytes there are re-hashed and `offset` says where to continue (send
    ``Range: bytes=OFFSET-``; if the server ignores it, call `reset`).

    Used as a context manager, leaving the block without `commit` keeps the
    partial file (a crash or Ctrl-C leaves it too), so the next pull resumes.
    Call `abort` to throw the bytes away. After `commit`, `abort` or `close`
    the writer cannot be used.

    The writer does not look in the store: call `ContentStore.exists` first
    to skip a download; `commit` of a digest that is already stored is
    cheap and returns the stored info.
    """

    def __init__(
        self, env: Env, digest: Digest, *, size: int | None, media_type: str, wait: float
    ) -> None:
        if size is not None and size < 0:
            raise ValueError(f"ingest {digest.short}: negative size {size}")
        self.digest = digest
        self.size = size
        self.media_type = media_type
        self.path = env.ingest_dir / ingest_name(digest)
        self._env = env
        self._verifier = Verifier(digest, size)
        self._sealed = False  # set by verified_path
        try:
            env.ingest_dir.mkdir(parents=True, exist_ok=True)
            fd = _lock(self.path, digest, create=True, wait=wait)
        except OSError as exc:
            raise _os_error(digest, exc) from exc
        assert fd is not None
        self._fd: int | None = fd
        try:
            have = os.fstat(fd).st_size
            self._rehash(0 if size is not None and have > size else have)
        except BaseException:
            self.close()
            raise

    @property
    def offset(self) -> int:
        """Bytes written so far (including those resumed from disk)."""
        return self._verifier.count

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"ingest {self.digest.short}: writer is closed")
        return self._fd

    def _rehash(self, length: int) -> None:
        fd = self._open_fd()
        try:
            os.ftruncate(fd, length)
            self._verifier = Verifier(self.digest, self.size)
            pos = 0
            while pos < length:
                piece = os.pread(fd, min(SEGMENT_SIZE, length - pos), pos)
                if not piece:
                    raise StoreError(f"ingest {self.digest.short}: partial file shrank")
                self._verifier.update(piece)
                pos += len(piece)
        except OSError as exc:
            raise _os_error(self.digest, exc) from exc

    def write(self, data: bytes) -> None:
        """Append ``data``. More bytes than the expected size abort the
        ingest (they cannot be the content asked for) with
        `DigestMismatchError`."""
        fd = self._open_fd()
        if self._sealed:
            raise ValueError(f"ingest {self.digest.short}: verified; no more writes")
        start = self.offset
        if self.size is not None and start + len(data) > self.size:
            self.abort()
            raise DigestMismatchError(
                f"content {self.digest.short}: size mismatch "
                f"(got at least {start + len(data)}, want {self.size})"
            )
        view = memoryview(data)
        pos = start
        try:
            while view:
                n = os.pwrite(fd, view, pos)
                pos += n
                view = view[n:]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # keep file and hash in step for a retry
            raise _os_error(self.digest, exc) from exc
        self._verifier.update(data)

    def truncate(self, size: int = 0) -> None:
        """Drop the bytes after ``size`` (0: start over, e.g. when the server
        ignored a Range request and sends the whole blob)."""
        if self._sealed:
            raise ValueError(f"ingest {self.digest.short}: verified; no more writes")
        if not 0 <= size <= self.offset:
            raise ValueError(f"ingest {self.digest.short}: cannot truncate to {size}")
        self._rehash(size)

    def reset(self) -> None:
        """Start over at offset 0."""
        self.truncate(0)

    def commit(self, *, labels: dict[str, str] | None = None) -> ContentInfo:
        """Verify size and digest, then store the blob in one write
        transaction and remove the partial file.

        On a mismatch the partial file is deleted, nothing is stored, and
        `DigestMismatchError` is raised. If the transaction fails otherwise
        (`StoreError`, e.g. the map is full) the partial file is kept for a
        later resume. Either way the writer is closed.

        Cost: the copy is one write transaction, so info and segments appear
        together, but it holds the store's writer lock while it runs, and
        LMDB (without MDB_WRITEMAP) keeps a transaction's dirty pages in
        memory until commit: about the blob's size in RAM. Fine for
        manifests, configs and index artifacts; layer bytes belong in the
        chunk store.
        """
        fd = self._open_fd()
        try:
            self._verifier.check(what="content")
        except DigestMismatchError:
            self.abort()
            raise
        with self._closed_on_failure(), self._env.txn(write=True) as txn:
            info = blobs.get_info(txn, self._env, self.digest)
            if info is None:
                # Hashed again while copying: what is stored is what was
                # read, even if something rewrote the file meanwhile.
                info = blobs.put_blob(
                    txn,
                    self._env,
                    self.digest,
                    self._segments(fd, self.offset),
                    media_type=self.media_type,
                    labels=labels,
                )
        self.abort()  # the partial file is stored now
        return info

    def verified_path(self) -> Path:
        """Check size and digest of the partial file and return its path,
        without copying it into the store: for a layer, which is read
        from there to build its index and chunks (module docstring).

        The file is hashed again from disk, so what was checked is what the
        caller will read: no other writer can change it while this writer
        holds its lock, which it does until `abort` (call it once the layer
        record is stored) or `close`. No more `write` after this.

        On a mismatch the partial file is deleted, nothing is stored, the
        writer is closed and `DigestMismatchError` is raised.
        """
        fd = self._open_fd()
        with self._closed_on_failure():
            self._verifier.check(what="content")
            on_disk = Verifier(self.digest, self.size)
            for piece in self._segments(fd, self.offset):
                on_disk.update(piece)
            if os.fstat(fd).st_size != self.offset:
                raise DigestMismatchError(f"content {self.digest.short}: partial file changed")
            on_disk.check(what="content")
        self._sealed = True
        return self.path

    def _segments(self, fd: int, size: int) -> Iterator[bytes]:
        pos = 0
        while pos < size:
            try:
                piece = os.pread(fd, min(SEGMENT_SIZE, size - pos), pos)
            except OSError as exc:
                raise _os_error(self.digest, exc) from exc
            if len(piece) != min(SEGMENT_SIZE, size - pos):
                raise DigestMismatchError(f"content {self.digest.short}: partial file changed")
            yield piece
            pos += len(piece)

    def abort(self) -> None:
        """Delete the partial file and close. Idempotent."""
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # while still holding the lock
        self.close()

    def close(self) -> None:
        """Release the lock and keep the partial file for a resume. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @contextlib.contextmanager
    def _closed_on_failure(self) -> Iterator[None]:
        """A digest mismatch deletes the partial file; any other failure keeps it for a
        resume. Either way the writer is closed."""
        try:
            yield
        except DigestMismatchError:
            self.abort()
            raise
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"offset={self.offset}"
        return f"<ContentWriter {self.digest.short} {state}>"


def list_ingests(env: Env) -> list[IngestInfo]:
    """Partial files, with whether a writer holds each right now."""
    out = []
    try:
        entries = list(os.scandir(env.ingest_dir))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            digest = decode_ingest_name(entry.name)
            st = entry.stat(follow_symlinks=False)
        except (ValueError, FileNotFoundError):
            continue  # not an ingest, or removed while we looked
        out.append(
            IngestInfo(
                digest=digest,
                path=Path(entry.path),
                offset=st.st_size,
                mtime=st.st_mtime,
                locked=_is_locked(Path(entry.path)),
            )
        )
    return sorted(out, key=lambda i: i.digest)


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)
    return False


def remove_ingest(env: Env, digest: Digest) -> None:
    """Delete a partial file; `AlreadyExistsError` if a writer holds it,
    `NotFoundError` if there is none."""
    path = env.ingest_dir / ingest_name(digest)
    try:
        fd = _lock(path, digest, create=False, wait=0.0)
        if fd is None:
            raise NotFoundError(f"ingest {digest.short}: not found")
        try:
            path.unlink()
        finally:
            os.close(fd)
    except OSError as exc:
        raise _os_error(digest, exc) from exc
