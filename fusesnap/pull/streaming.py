"""A layer indexed and stored while it downloads: one pass over the bytes as they arrive.

    index, received = await download_and_ingest(store, client, ref, layer, diff_id,
                                                 writer, progress=..., limits=...)

The download goes two ways at once: to the resumable ingest file (``writer``,
`fusesnap.store.ContentWriter`: a killed pull resumes from it) and through a
bounded `BlobPipe` to a thread that runs `ingest_layer_stream` on it (hash the
blob and the tar, inflate, index, chunk, store; `fusesnap.pull.indexing`). The
blob is never read back. A pull that resumes a partial file feeds the indexer
its bytes first (the one time they are read from disk), then the rest as it
comes.

Backpressure: the pipe holds at most `_PIPE_BYTES`; a download faster than
the indexer waits for it (TCP does the rest), so memory stays bounded.

Failures: the layer record is written only after the whole blob hashed to its
digest and the tar to its diff ID (`ingest_layer_stream`). A blob that does
not match its digest deletes the partial file. A download that fails stops
the indexer (`BlobPipe.fail`) and raises the download's error; an indexer
that fails stops the download and raises its own. A server that ignores
``Range`` after bytes were indexed makes the caller start over (`Restart`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import BinaryIO, cast

import trio

from fusesnap.blocking import run_blocking
from fusesnap.digest import Digest
from fusesnap.errors import DigestMismatchError
from fusesnap.index import LayerIndex, Limits
from fusesnap.oci import Descriptor
from fusesnap.pull.indexing import ingest_layer_stream
from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient
from fusesnap.store import ContentWriter, Store

__all__ = ["BlobPipe", "PipeBroken", "Restart", "download_and_ingest"]

# Bytes in flight between the download and the indexer.
_PIPE_BYTES = 8 << 20
# The download is handed over in pieces of about this size (one thread hop each).
_FLUSH_SIZE = 1 << 20
# The indexer reads a resumed partial file in pieces of this size.
_FILE_PIECE = 1 << 20


class PipeBroken(OSError):
    """The other side of a `BlobPipe` gave up."""


class Restart(Exception):
    """The server would not resume and the indexer has read bytes already: start over."""


class BlobPipe:
    """Bytes from the download to the indexing thread: ``write`` blocks while the pipe is
    full, ``read`` while it is empty. ``close`` is the end of the blob; ``fail`` makes the
    reader raise `PipeBroken`; ``abandon`` (the reader is gone) makes the writer raise.
    Thread-safe."""

    def __init__(self, limit: int = _PIPE_BYTES) -> None:
        self._cond = threading.Condition()
        self._pieces: deque[bytes] = deque()
        self._size = 0
        self._limit = limit
        self._eof = False
        self._failed: str | None = None
        self._abandoned: BaseException | None = None

    def write(self, data: bytes) -> None:
        with self._cond:
            while self._size >= self._limit and self._abandoned is None and not self._failed:
                self._cond.wait()
            if self._abandoned is not None:
                raise self._abandoned
            if self._failed or self._eof:
                raise PipeBroken("write to a closed blob pipe")
            self._pieces.append(data)
            self._size += len(data)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def fail(self, why: str) -> None:
        with self._cond:
            self._failed = why
            self._cond.notify_all()

    def abandon(self, error: BaseException) -> None:
        with self._cond:
            self._abandoned = error
            self._pieces.clear()
            self._size = 0
            self._cond.notify_all()

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while not self._pieces and not self._eof and not self._failed:
                self._cond.wait()
            if self._failed:
                raise PipeBroken(self._failed)
            if not self._pieces:
                return b""
            piece = self._pieces.popleft()
            if 0 <= n < len(piece):
                piece, rest = piece[:n], piece[n:]
                self._pieces.appendleft(rest)
            self._size -= len(piece)
            self._cond.notify_all()
            return piece


class _Source:
    """What the indexer reads: the first ``prefix`` bytes of the partial file (a resumed
    download), then the pipe."""

    def __init__(self, writer: ContentWriter, prefix: int, pipe: BlobPipe) -> None:
        self._path = writer.path
        self._left = prefix
        self._pipe = pipe
        self._file = open(self._path, "rb") if prefix else None  # noqa: SIM115

    def read(self, n: int = -1) -> bytes:
        if self._file is not None:
            want = self._left if n < 0 else min(n, self._left)
            data = self._file.read(min(want, _FILE_PIECE))
            if not data:
                raise PipeBroken(f"{self._path}: partial file shrank")
            self._left -= len(data)
            if not self._left:
                self.close()
            return data
        return self._pipe.read(n)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Sink:
    """The client's `BlobSink`: each piece to the ingest file and to the indexer."""

    def __init__(
        self, writer: ContentWriter, pipe: BlobPipe, on_bytes: Callable[[int], None]
    ) -> None:
        self._writer = writer
        self._pipe = pipe
        self._buffer = bytearray()
        self._on_bytes = on_bytes
        self._resumed = writer.offset
        self.fed = 0
        self.received = 0

    @property
    def offset(self) -> int:
        return self._writer.offset + len(self._buffer)

    async def write(self, data: bytes) -> None:
        self._buffer += data
        self.received += len(data)
        self._on_bytes(len(data))
        if len(self._buffer) >= _FLUSH_SIZE:
            await self.flush()

    async def flush(self) -> None:
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            await run_blocking(self._put, data)

    def _put(self, data: bytes) -> None:
        self._writer.write(data)
        self._pipe.write(data)  # may wait for the indexer
        self.fed += len(data)

    async def reset(self) -> None:
        self._buffer.clear()
        await run_blocking(self._writer.reset)
        if self._resumed or self.fed:
            raise Restart("the registry would not resume the download; starting over")


async def download_and_ingest(
    store: Store,
    client: RegistryClient,
    ref: Reference,
    layer: Descriptor,
    diff_id: Digest,
    writer: ContentWriter,
    *,
    on_bytes: Callable[[int], None],
    limits: Limits | None,
) -> tuple[LayerIndex, int]:
    """Download ``layer`` into ``writer`` and index it as it comes (module docstring);
    its index (stored with its chunks and record) and the bytes received.

    ``on_bytes(n)`` is called for every piece received. The caller holds the leases
    and closes ``writer``; it is aborted here (the partial file deleted) once the
    layer is stored, or when the blob does not match its digest.
    """
    pipe = BlobPipe()
    source = _Source(writer, writer.offset, pipe)
    sink = _Sink(writer, pipe, on_bytes)
    outcome: list[LayerIndex | BaseException] = []

    def index_it() -> None:
        try:
            blob = cast(BinaryIO, source)  # it reads, which is all the index build does
            outcome.append(ingest_layer_stream(store, blob, layer, diff_id=diff_id, limits=limits))
        except BaseException as exc:
            outcome.append(exc)
            pipe.abandon(exc)
        finally:
            source.close()

    stopped: BaseException | None = None
    async with trio.open_nursery() as nursery:
        # A thread of its own for as long as the download lasts (not one of the short
        # jobs `run_blocking` limits); `LayerJob` bounds how many layers run at once.
        nursery.start_soon(partial(trio.to_thread.run_sync, index_it))
        try:
            await client.download_blob(ref, layer, sink)
            await sink.flush()
        except BaseException as exc:  # re-raised below, once the indexer has stopped
            pipe.fail(f"download stopped: {exc}")
            stopped = exc
        else:
            pipe.close()
    if stopped is not None:
        raise stopped  # the indexer's own error when it was the one to give up
    got = outcome[0]
    if isinstance(got, DigestMismatchError):
        await run_blocking(writer.abort)  # bad bytes: nothing to resume
    if isinstance(got, BaseException):
        raise got
    await run_blocking(writer.abort)  # stored: the partial file is not needed
    return got, sink.received
