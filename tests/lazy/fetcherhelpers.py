"""Layers for the fetcher tests: real tar streams (gzip with checkpoints, uncompressed), and
hand-made frame layouts (independently gzip'd / zstd'd pieces, as eStargz and zstd:chunked
lay them out), with a counting, fault-injecting ``fetch_range`` over the blobs."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
import tarfile
import zlib
from dataclasses import dataclass

import trio
import zstandard

from fusesnap.digest import Digest
from fusesnap.index import ChunkRef, Entry, EntryType, LayerIndex, build_index
from fusesnap.oci import OCI_LAYER_GZIP, OCI_LAYER_TAR

MiB = 1 << 20


def text(size: int, seed: int) -> bytes:
    """Text-like bytes (gzip about 3:1)."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(2, 10)).hex().encode() for _ in range(3000)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=256)) + b"\n"
    return bytes(out[:size])


def sha(data: bytes) -> Digest:
    return Digest("sha256:" + hashlib.sha256(data).hexdigest())


def make_tar(files: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sample_files(seed: int = 0) -> list[tuple[str, bytes]]:
    """About 14 MiB: big text files (several 1 MiB chunks), random ones, many small ones."""
    rng = random.Random(seed)
    files: list[tuple[str, bytes]] = []
    for i in range(4):
        files.append((f"big/text{i}.txt", text(2 * MiB + rng.randrange(MiB), seed + i)))
        files.append((f"big/random{i}.bin", rng.randbytes(rng.randrange(300_000, 900_000))))
        files += [
            (f"small/{i}/{k:03}", text(rng.randrange(1, 9000), seed * 1000 + i * 100 + k))
            for k in range(60)
        ]
    return files


def frame_layout_files(seed: int = 3) -> list[tuple[str, bytes]]:
    """Files for a frame layout: some of several chunks, most of one."""
    rng = random.Random(seed)
    files = [(f"multi/{i}", text(rng.randrange(200_000, 400_000), seed + i)) for i in range(3)]
    files += [(f"one/{i:02}", text(rng.randrange(100, 30_000), seed * 100 + i)) for i in range(30)]
    return files


@dataclass(frozen=True)
class Layer:
    blob: bytes
    tar: bytes  # ground truth: chunk bytes are tar[offset:offset + length]
    index: LayerIndex
    files: dict[str, bytes] | None = None  # frame layouts: offsets are within the file

    @property
    def refs(self) -> list[ChunkRef]:
        return [c for e in self.index.entries for c in e.chunks]

    def truth(self, ref: ChunkRef) -> bytes:
        if self.files is None:
            return self.tar[ref.offset : ref.offset + ref.length]
        entry = next(e for e in self.index.entries if ref in e.chunks)
        return self.files[entry.path][ref.offset : ref.offset + ref.length]

    def entry(self, path: str) -> Entry:
        return self.index.by_path[path]


def gzip_layer(files: list[tuple[str, bytes]], *, spacing: int = MiB) -> Layer:
    tar = make_tar(files)
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    blob = c.compress(tar) + c.flush()
    index = build_index(
        io.BytesIO(blob),
        layer_digest=sha(blob),
        media_type=OCI_LAYER_GZIP,
        checkpoint_spacing=spacing,
    )
    assert index.checkpoints is not None
    return Layer(blob, tar, index)


def raw_layer(files: list[tuple[str, bytes]]) -> Layer:
    tar = make_tar(files)
    index = build_index(io.BytesIO(tar), layer_digest=sha(tar), media_type=OCI_LAYER_TAR)
    return Layer(tar, tar, index)


def frame_layer(
    files: list[tuple[str, bytes]], codec: str, *, chunk: int = 256 << 10, frame: int = 0
) -> Layer:
    """Each file (or each ``frame`` bytes of it) compressed on its own, back to back, with
    the chunks of a frame named by ``inner`` offsets. ``codec``: ``gzip`` (eStargz: each
    frame two gzip members, to exercise multi-member decoding) or ``zstd``."""
    zc = zstandard.ZstdCompressor(level=3)
    blob = bytearray(b"header!!")  # a frame layout does not start at 0
    entries = []
    for name, data in files:
        refs = []
        step = frame or max(len(data), 1)
        for f0 in range(0, len(data), step):
            piece = data[f0 : f0 + step]
            if codec == "gzip":
                half = len(piece) // 2
                comp = gzip.compress(piece[:half]) + gzip.compress(piece[half:])
            else:
                comp = zc.compress(piece)
            start = len(blob)
            blob += comp
            for i in range(0, len(piece), chunk):
                part = piece[i : i + chunk]
                refs.append(
                    ChunkRef(
                        f0 + i,
                        len(part),
                        hashlib.sha256(part).digest(),
                        coffset=start,
                        clength=len(comp),
                        inner=i,
                    )
                )
        entries.append(Entry(name, EntryType.FILE, size=len(data), chunks=tuple(refs)))
    blob += b"trailer"
    compression = "estargz" if codec == "gzip" else "zstd:chunked"
    index = LayerIndex(
        layer_digest=sha(bytes(blob)),
        diff_id=sha(b"unused"),
        media_type=OCI_LAYER_GZIP,
        compression=compression,
        compressed_size=len(blob),
        uncompressed_size=sum(len(d) for _, d in files),
        chunk_size=chunk,
        entries=tuple(entries),
    )
    return Layer(bytes(blob), b"", index, dict(files))


class Blobs:
    """``fetch_range`` over in-memory blobs: records calls, can fail, stall or corrupt."""

    def __init__(self, *layers: Layer) -> None:
        self.blobs = {layer.index.layer_digest: layer.blob for layer in layers}
        self.calls: list[tuple[int, int]] = []
        self.errors: list[Exception] = []
        self.delay = 0.0
        self.hang = False
        self.active = 0
        self.max_active = 0

    async def __call__(self, digest: Digest, offset: int, length: int) -> bytes:
        self.calls.append((offset, length))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.hang:
                await trio.sleep_forever()
            await trio.sleep(self.delay)
            if self.errors:
                raise self.errors.pop(0)
            blob = self.blobs[digest]
            assert offset >= 0, offset
            assert 0 < length <= len(blob) - offset, (offset, length)
            return blob[offset : offset + length]
        finally:
            self.active -= 1

    @property
    def fetched(self) -> int:
        return sum(n for _, n in self.calls)

    def corrupt(self, layer: Layer, offset: int) -> None:
        blob = bytearray(self.blobs[layer.index.layer_digest])
        blob[offset] ^= 0x55
        self.blobs[layer.index.layer_digest] = bytes(blob)
