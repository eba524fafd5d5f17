"""What a chunk read costs in the daemon, without FUSE or the kernel: the stored formats
side by side, on the same bytes.

    python -m tools.bench.chunkread [--mib 64] [--reads 2000] [--runs 3]

A temporary store gets ``--mib`` MiB of 1 MiB chunks (half compressible text from
``/usr/lib``, half random) three times over: as format 0/1 (one zstd frame or raw, what
stores before v4 hold: sha256 on every read) and as format 2 (64 KiB frames with
checksums). Timed, median of ``--runs``, per format:

    whole chunk      ChunkStore.get of every chunk (a sequential reader's load)
    4 KiB random     ``--reads`` reads of 4 KiB at random offsets through a cold
                     ChunkCache (what a random reader's LRU miss costs)
    cached seq       128 KiB reads of every chunk through a ChunkCache, cold

Single-threaded and in-process: it measures the CPU cost of the read path, not the
machine's disk or FUSE. Other work on the machine still shows in it; compare formats
within one run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio
import zstandard

from fusesnap.fuse import ChunkCache
from fusesnap.index import ChunkRef, Entry, EntryType
from fusesnap.store import Store, open_store
from fusesnap.store.schema import CHUNK_RAW, CHUNK_ZSTD, CHUNKS

MiB = 1 << 20


def sample(mib: int) -> list[bytes]:
    """``mib`` chunks: every other one text-like (libraries), the rest random."""
    text = b""
    for name in sorted(os.listdir("/usr/lib/x86_64-linux-gnu"))[:400]:
        path = Path("/usr/lib/x86_64-linux-gnu") / name
        if path.is_file() and not path.is_symlink():
            text += path.read_bytes()[: 4 * MiB]
        if len(text) >= mib * MiB:
            break
    rng = random.Random(1)
    out = []
    for i in range(mib):
        if i % 2 == 0 and len(text) >= (i + 1) * MiB:
            out.append(text[i * MiB : (i + 1) * MiB])
        else:
            out.append(rng.randbytes(MiB))
    return out


def old_format(data: bytes) -> bytes:
    frame = zstandard.ZstdCompressor(level=3).compress(data)
    return bytes((CHUNK_ZSTD,)) + frame if len(frame) < len(data) else bytes((CHUNK_RAW,)) + data


def fill(store: Store, chunks: list[bytes], *, old: bool) -> list[ChunkRef]:
    refs = []
    items = []
    for i, data in enumerate(chunks):
        # Distinct digests per format: the same bytes with a one-byte tag.
        data = data[:-1] + bytes([1 if old else 2])
        digest = hashlib.sha256(data).digest()
        refs.append(ChunkRef(i * MiB, len(data), digest))
        items.append((digest, data))
    if old:
        with store.env.txn(write=True) as txn:
            for digest, data in items:
                txn.put(digest, old_format(data), db=store.env.db(CHUNKS))
    else:
        store.chunks.put_many(items)
    return refs


def timed(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    chunks = sample(args.mib)
    with tempfile.TemporaryDirectory() as tmp, open_store(Path(tmp)) as store:
        rows = []
        for label, old in (("format 0/1 (sha256)", True), ("format 2 (frames)", False)):
            refs = fill(store, chunks, old=old)
            entry = Entry("f", EntryType.FILE, 0o644, size=sum(r.length for r in refs),
                          chunks=tuple(refs))  # fmt: skip
            rng = random.Random(42)
            offsets = [rng.randrange(entry.size - 4096) for _ in range(args.reads)]

            def whole(refs: list[ChunkRef] = refs) -> None:
                for ref in refs:
                    store.chunks.get(ref.digest)

            def random_reads(entry: Entry = entry, offsets: list[int] = offsets) -> None:
                async def go() -> None:
                    cache = ChunkCache(store.chunks, max_bytes=16 * MiB)
                    for off in offsets:
                        await cache.read(entry, off, 4096)

                trio.run(go)

            def sequential(entry: Entry = entry) -> None:
                async def go() -> None:
                    cache = ChunkCache(store.chunks)
                    for off in range(0, entry.size, 128 << 10):
                        await cache.read(entry, off, 128 << 10)

                trio.run(go)

            t_whole = timed(whole, args.runs)
            t_random = timed(random_reads, args.runs)
            t_seq = timed(sequential, args.runs)
            rows.append(
                f"{label:<20}  {t_whole / len(refs) * 1e3:8.2f} ms/chunk  "
                f"{t_random / args.reads * 1e3:8.3f} ms/read  "
                f"{args.mib / t_seq:8.0f} MiB/s"
            )
        print(f"{args.mib} MiB, {args.reads} random reads, median of {args.runs}")
        print(f"{'':<20}  {'whole chunk':>16}  {'4 KiB random':>16}  {'cached seq':>12}")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
