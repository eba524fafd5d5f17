"""The Operations class called directly (no mount): attributes, reads, and the one error
translation point (only FUSEError leaves a handler)."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import pyfuse3
import pytest

from fusesnap.errors import LayerError
from fusesnap.fs import MergedTree
from fusesnap.fuse import ChunkCache, FuseOperations, ImageSource, mount_options
from fusesnap.fuse.attrs import CACHE_TIMEOUT
from fusesnap.index import Entry, EntryType
from tests.fs.helpers import MTIME, MemoryChunks, directory, file, hardlink, layer, symlink

CTX: Any = None  # handlers ignore the request context
DATA = bytes(i * 7 % 251 for i in range(10240))  # chunks of 4096, 4096, 2048, all different
LONG_TARGET = "t" * 80


def device(path: str, kind: EntryType, major: int, minor: int) -> Entry:
    return Entry(path, kind, 0o660, mtime=MTIME, devmajor=major, devminor=minor)


@pytest.fixture
def chunks() -> MemoryChunks:
    return MemoryChunks()


@pytest.fixture
def tree(chunks: MemoryChunks) -> MergedTree:
    return MergedTree.build([layer(
        directory("bin"),
        file("bin/suid", "#!/bin/sh\n", mode=0o4755, uid=1000, gid=42, source=chunks),
        hardlink("bin/also", "bin/suid"),
        directory("data"),
        file("data/big", DATA, chunk=4096, source=chunks, mtime_nsec=123456789),
        file("data/empty", b"", source=chunks),
        file("data/x", "x", source=chunks, xattrs={"user.k": b"v", "security.capability": b"\1"}),
        directory("data/sub"),
        symlink("short", "bin/suid"),
        symlink("long", LONG_TARGET),
        device("null", EntryType.CHAR, 1, 3),
        device("sda", EntryType.BLOCK, 8, 0),
        Entry("fifo", EntryType.FIFO, 0o644, mtime=MTIME),
    )])  # fmt: skip


@pytest.fixture
def ops(tree: MergedTree, chunks: MemoryChunks) -> FuseOperations:
    return FuseOperations(ImageSource(tree, ChunkCache(chunks)))


def ino(tree: MergedTree, path: str) -> int:
    return tree.lookup(path).ino


async def lookup(ops: FuseOperations, tree: MergedTree, path: str) -> pyfuse3.EntryAttributes:
    parent, _, name = path.rpartition("/")
    return await ops.lookup(ino(tree, parent), os.fsencode(name), CTX)


async def test_attributes_are_the_entries(ops: FuseOperations, tree: MergedTree) -> None:
    suid = await lookup(ops, tree, "bin/suid")
    assert stat.S_ISREG(suid.st_mode)
    assert stat.S_IMODE(suid.st_mode) == 0o4755
    assert (suid.st_uid, suid.st_gid, suid.st_size, suid.st_nlink) == (1000, 42, 10, 2)
    assert suid.st_mtime_ns == MTIME * 10**9
    assert suid.entry_timeout == suid.attr_timeout == CACHE_TIMEOUT
    also = await lookup(ops, tree, "bin/also")
    assert also.st_ino == suid.st_ino

    big = await ops.getattr(ino(tree, "data/big"), CTX)
    assert big.st_mtime_ns == MTIME * 10**9 + 123456789
    assert big.st_blocks == 24  # 10240 bytes in 4 KiB blocks: 3 blocks of 8 sectors
    assert big.st_blksize == 4096
    assert (await ops.getattr(ino(tree, "data/empty"), CTX)).st_blocks == 0

    data = await ops.getattr(ino(tree, "data"), CTX)
    assert stat.S_ISDIR(data.st_mode)
    assert data.st_nlink == 3  # ., data's entry in /, data/sub/..
    root = await ops.getattr(pyfuse3.ROOT_INODE, CTX)
    assert root.st_ino == pyfuse3.ROOT_INODE

    short = await lookup(ops, tree, "short")
    assert stat.S_ISLNK(short.st_mode)
    assert (short.st_size, short.st_blocks) == (len("bin/suid"), 0)
    long = await lookup(ops, tree, "long")
    assert (long.st_size, long.st_blocks) == (80, 8)  # too long for ext4's inline symlink

    null = await lookup(ops, tree, "null")
    assert stat.S_ISCHR(null.st_mode)
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    sda = await lookup(ops, tree, "sda")
    assert stat.S_ISBLK(sda.st_mode)
    assert (os.major(sda.st_rdev), os.minor(sda.st_rdev)) == (8, 0)
    assert stat.S_ISFIFO((await lookup(ops, tree, "fifo")).st_mode)


async def test_lookups_are_counted_and_forgotten(ops: FuseOperations, tree: MergedTree) -> None:
    attr = await lookup(ops, tree, "data/x")
    await lookup(ops, tree, "data/x")
    assert ops.lookups.count(attr.st_ino) == 2
    await ops.forget([(attr.st_ino, 2)])
    assert ops.lookups.count(attr.st_ino) == 0
    await ops.forget([(attr.st_ino, 5), (999_999, 1)])  # miscounts must not raise
    assert ops.stats.requests["forget"] == 2


async def test_dot_and_dotdot(ops: FuseOperations, tree: MergedTree) -> None:
    sub = ino(tree, "data/sub")
    assert (await ops.lookup(sub, b".", CTX)).st_ino == sub
    assert (await ops.lookup(sub, b"..", CTX)).st_ino == ino(tree, "data")
    assert (await ops.lookup(pyfuse3.ROOT_INODE, b"..", CTX)).st_ino == pyfuse3.ROOT_INODE


async def test_a_miss_is_a_cached_negative_entry(ops: FuseOperations, tree: MergedTree) -> None:
    attr = await ops.lookup(ino(tree, "data"), b"nope", CTX)
    assert attr.st_ino == 0
    assert attr.entry_timeout == CACHE_TIMEOUT
    assert ops.stats.negative_lookups == 1
    assert not ops.stats.errors


@pytest.mark.parametrize(
    ("parent", "code"), [(10_000, errno.ENOENT), (0, errno.ENOENT), (-1, errno.ENOTDIR)]
)
async def test_bad_parents(ops: FuseOperations, tree: MergedTree, parent: int, code: int) -> None:
    parent = ino(tree, "data/x") if parent == -1 else parent
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.lookup(parent, b"x", CTX)
    assert info.value.errno == code
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getattr(10_000, CTX)
    assert info.value.errno == errno.ENOENT


async def test_readlink(ops: FuseOperations, tree: MergedTree) -> None:
    assert await ops.readlink(ino(tree, "long"), CTX) == LONG_TARGET.encode()
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.readlink(ino(tree, "data/x"), CTX)
    assert info.value.errno == errno.EINVAL


async def test_open_and_read(ops: FuseOperations, tree: MergedTree) -> None:
    big = ino(tree, "data/big")
    fi = await ops.open(big, os.O_RDONLY, CTX)
    assert fi.keep_cache
    assert not fi.direct_io
    assert await ops.read(fi.fh, 0, 1 << 20) == DATA
    assert await ops.read(fi.fh, 4000, 200) == DATA[4000:4200]  # across a chunk boundary
    assert await ops.read(fi.fh, 10_000, 4096) == DATA[10_000:]
    assert await ops.read(fi.fh, 20_000, 10) == b""
    await ops.release(fi.fh)
    assert ops.stats.bytes_read == len(DATA) + 200 + 240
    for flags, code in [(os.O_WRONLY, errno.EROFS), (os.O_RDWR, errno.EROFS)]:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.open(big, flags, CTX)
        assert info.value.errno == code
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.open(ino(tree, "data"), os.O_RDONLY, CTX)
    assert info.value.errno == errno.EISDIR
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.opendir(big, CTX)
    assert info.value.errno == errno.ENOTDIR


async def test_a_missing_chunk_is_eio_and_the_next_read_works(
    ops: FuseOperations, tree: MergedTree, chunks: MemoryChunks
) -> None:
    big = tree.lookup("data/big")
    del chunks.data[big.entry.chunks[1].digest]
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.read(big.ino, 4096, 100)
    assert info.value.errno == errno.EIO  # not ENOENT: the file exists, its bytes do not
    assert await ops.read(big.ino, 0, 100) == DATA[:100]
    assert ops.stats.errors == {"read:EIO": 1}


class BrokenSource(ImageSource):
    def node(self, ino: int) -> Any:
        if ino == 2:
            raise ZeroDivisionError("a bug")
        if ino == 3:
            raise LayerError("layer sha256:ab: corrupt index")
        return super().node(ino)


async def test_unexpected_errors_become_eio(
    tree: MergedTree, chunks: MemoryChunks, caplog: pytest.LogCaptureFixture
) -> None:
    ops = FuseOperations(BrokenSource(tree, ChunkCache(chunks)))
    for bad in (2, 3):
        with pytest.raises(pyfuse3.FUSEError) as info:
            await ops.getattr(bad, CTX)
        assert info.value.errno == errno.EIO
    assert "a bug" in caplog.text  # logged with its traceback
    assert "corrupt index" in caplog.text
    assert (await ops.getattr(1, CTX)).st_ino == 1  # still serving
    assert ops.stats.errors == {"getattr:EIO": 2}


async def test_every_change_is_erofs(ops: FuseOperations) -> None:
    calls = [
        ops.setattr(1, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, CTX),
        ops.mknod(1, b"n", 0o644, 0, CTX),
        ops.mkdir(1, b"d", 0o755, CTX),
        ops.unlink(1, b"short", CTX),
        ops.rmdir(1, b"data", CTX),
        ops.symlink(1, b"s", b"t", CTX),
        ops.rename(1, b"short", 1, b"other", 0, CTX),
        ops.link(2, 1, b"l", CTX),
        ops.write(2, 0, b"x"),
        ops.create(1, b"c", 0o644, os.O_WRONLY, CTX),
        ops.setxattr(1, b"user.a", b"b", CTX),
        ops.removexattr(1, b"user.a", CTX),
    ]
    for call in calls:
        with pytest.raises(pyfuse3.FUSEError) as info:
            await call
        assert info.value.errno == errno.EROFS
    assert sum(ops.stats.errors.values()) == len(calls)


async def test_xattrs(ops: FuseOperations, tree: MergedTree) -> None:
    x = ino(tree, "data/x")
    assert sorted(await ops.listxattr(x, CTX)) == [b"security.capability", b"user.k"]
    assert await ops.getxattr(x, b"user.k", CTX) == b"v"
    assert await ops.listxattr(ino(tree, "data/big"), CTX) == []
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getxattr(x, b"user.nope", CTX)
    assert info.value.errno == pyfuse3.ENOATTR
    assert not ops.stats.errors  # "no such attribute" is an answer, not a failure


async def test_a_tree_without_xattrs_lets_the_kernel_answer_getxattr(
    chunks: MemoryChunks,
) -> None:
    tree = MergedTree.build([layer(file("f", "f", source=chunks))])
    ops = FuseOperations(ImageSource(tree, ChunkCache(chunks)))
    with pytest.raises(pyfuse3.FUSEError) as info:
        await ops.getxattr(2, b"security.selinux", CTX)
    assert info.value.errno == errno.ENOSYS
    assert await ops.listxattr(2, CTX) == []
    assert not ops.stats.errors  # on purpose: not a failure


async def test_statfs(ops: FuseOperations, tree: MergedTree) -> None:
    st = await ops.statfs(CTX)
    assert st.f_files == len(tree)
    assert st.f_namemax == 255
    assert st.f_bsize == st.f_frsize == 4096
    assert st.f_blocks * 4096 >= tree.stats.file_bytes
    assert (st.f_bfree, st.f_bavail, st.f_ffree) == (0, 0, 0)


def test_directory_entries_and_offsets(tree: MergedTree, chunks: MemoryChunks) -> None:
    source = ImageSource(tree, ChunkCache(chunks))
    data = ino(tree, "data")
    everything = [(name, node.ino) for name, node in source.entries(data)]
    assert everything[:2] == [(".", data), ("..", 1)]
    assert [name for name, _ in everything[2:]] == ["big", "empty", "sub", "x"]
    for start in range(len(everything) + 1):
        assert [(n, node.ino) for n, node in source.entries(data, start)] == everything[start:]
    with pytest.raises(NotADirectoryError):
        list(source.entries(ino(tree, "data/x")))


def test_mount_options() -> None:
    assert {"ro", "default_permissions", "subtype=fusesnap"} <= mount_options()
    assert "allow_other" not in mount_options()
    assert "allow_other" in mount_options(allow_other=True)
