"""Opening, sharing and closing the LMDB environment; schema versions."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import lmdb
import pytest
import zstandard

from fusesnap.digest import Digest
from fusesnap.errors import StoreError
from fusesnap.store import ContentInfo, default_root, open_store
from fusesnap.store import schema as schema_module
from fusesnap.store.env import DEFAULT_MAP_SIZE
from fusesnap.store.schema import (
    CHUNK_FRAMES,
    CHUNKS,
    CONTENT,
    DATABASES,
    META,
    SCHEMA_VERSION,
    SCHEMA_VERSION_KEY,
    blob_key,
    content_key,
    pack,
    unpack,
)

from .helpers import MiB, blob, chunk, layer_digest, layer_record, put, run_python


def raw_env(root: Path) -> lmdb.Environment:
    return lmdb.open(str(root / "store.lmdb"), max_dbs=16)


def set_schema_version(root: Path, version: int) -> None:
    env = raw_env(root)
    try:
        with env.begin(write=True) as txn:
            txn.put(SCHEMA_VERSION_KEY, pack(version), db=env.open_db(META, txn=txn))
    finally:
        env.close()


def test_new_store_layout(root: Path) -> None:
    with open_store(root) as store:
        assert (root / "store.lmdb" / "data.mdb").is_file()
        assert (root / "ingest").is_dir()
        assert store.root == root
        with store.env.txn() as txn:
            assert unpack(txn.get(SCHEMA_VERSION_KEY, b"", db=store.env.db(META))) == SCHEMA_VERSION
    env = raw_env(root)
    try:
        with env.begin() as txn:
            names = {k for k, _ in txn.cursor()}
    finally:
        env.close()
    assert names == set(DATABASES)  # reserved ones too: snapshots, containers


def test_newer_schema_is_refused(root: Path) -> None:
    open_store(root).close()
    set_schema_version(root, 99)
    with pytest.raises(StoreError) as exc:
        open_store(root)
    assert str(exc.value) == (
        f"store at {root} has schema v99; this fusesnap understands up to v{SCHEMA_VERSION}"
    )
    set_schema_version(root, 1)  # the failed open left nothing half-open behind
    open_store(root).close()


def test_older_schema_is_migrated(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    open_store(root).close()
    calls = []
    next_version = SCHEMA_VERSION + 1
    monkeypatch.setattr(schema_module, "SCHEMA_VERSION", next_version)
    monkeypatch.setitem(
        schema_module.MIGRATIONS, SCHEMA_VERSION, lambda txn, dbs: calls.append(sorted(dbs))
    )
    with open_store(root) as store, store.env.txn() as txn:
        assert unpack(txn.get(SCHEMA_VERSION_KEY, b"", db=store.env.db(META))) == next_version
    assert calls == [sorted(DATABASES)]


V1_DATABASES = (
    b"meta",
    b"content",
    b"blobs",
    b"images",
    b"leases",
    b"layers",
    b"chunks",
    b"snapshots",
    b"containers",
)


def test_v1_store_is_migrated_to_the_current_version(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A store as fusesnap v1 wrote it: content, no layer_data, and layers
    and chunks only reserved (here with a stray entry v2 would misread)."""
    data = b"content from the v1 days"
    info = ContentInfo(Digest.of(data), len(data), "x", created=1.0, segments=1)
    (root / "store.lmdb").mkdir(parents=True)
    env = raw_env(root)
    try:
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name, txn=txn, create=True) for name in V1_DATABASES}
            txn.put(SCHEMA_VERSION_KEY, pack(1), db=dbs[META])
            txn.put(content_key(info.digest), pack(info.to_record()), db=dbs[CONTENT])
            txn.put(blob_key(info.digest, 0), data, db=dbs[b"blobs"])
            txn.put(b"stray", b"not a chunk", db=dbs[b"chunks"])
    finally:
        env.close()

    with open_store(root) as store:
        with store.env.txn() as txn:
            got = unpack(txn.get(SCHEMA_VERSION_KEY, b"", db=store.env.db(META)))
            assert got == SCHEMA_VERSION
        assert "dropping 1 unknown entries of chunks" in caplog.text
        assert store.content.read(info.digest) == data
        assert store.chunks.stats().count == 0
        store.chunks.put_many([chunk(data)])
        store.layers.put(layer_record("a", [chunk(data)[0]]))
        assert store.layers.present_chunks(layer_digest("a"))[:2] == (1, 1)
    env = raw_env(root)
    try:
        with env.begin() as txn:
            assert {k for k, _ in txn.cursor()} == set(DATABASES)
    finally:
        env.close()
    caplog.clear()
    with open_store(root) as store:  # current now: opens without migrating again
        assert store.chunks.get(chunk(data)[0]) == data
        assert store.layers.get(layer_digest("a")).chunks == chunk(data)[0]
    assert "dropping" not in caplog.text


def test_v2_store_is_migrated(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    """v2 reserved ``snapshots`` and ``containers``: a stray entry is dropped, the rest
    of the store is kept, and snapshots can be written after."""
    data = b"content from the v2 days"
    info = ContentInfo(Digest.of(data), len(data), "x", created=1.0, segments=1)
    (root / "store.lmdb").mkdir(parents=True)
    env = raw_env(root)
    try:
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name, txn=txn, create=True) for name in DATABASES}
            txn.put(SCHEMA_VERSION_KEY, pack(2), db=dbs[META])
            txn.put(content_key(info.digest), pack(info.to_record()), db=dbs[CONTENT])
            txn.put(blob_key(info.digest, 0), data, db=dbs[b"blobs"])
            txn.put(b"stray", b"not a snapshot", db=dbs[b"snapshots"])
    finally:
        env.close()
    with open_store(root) as store:
        with store.env.txn() as txn:
            assert unpack(txn.get(SCHEMA_VERSION_KEY, b"", db=store.env.db(META))) == SCHEMA_VERSION
        assert "dropping 1 unknown entries of snapshots" in caplog.text
        assert store.content.read(info.digest) == data
        assert store.snapshots.list() == []


def test_v3_store_keeps_its_chunks_and_writes_new_ones_in_frames(root: Path) -> None:
    """v4 only changed how new chunks are written: v3's raw and one-frame chunks stay."""
    old = {hashlib.sha256(d).digest(): v for d, v in [(b"raw", b"\0raw"), (b"z" * 999, b"")]}
    zdigest = hashlib.sha256(b"z" * 999).digest()
    old[zdigest] = b"\x01" + zstandard.ZstdCompressor().compress(b"z" * 999)
    (root / "store.lmdb").mkdir(parents=True)
    env = raw_env(root)
    try:
        with env.begin(write=True) as txn:
            dbs = {name: env.open_db(name, txn=txn, create=True) for name in DATABASES}
            txn.put(SCHEMA_VERSION_KEY, pack(3), db=dbs[META])
            for key, value in old.items():
                txn.put(key, value, db=dbs[CHUNKS])
    finally:
        env.close()
    with open_store(root) as store:
        assert store.chunks.get(hashlib.sha256(b"raw").digest()) == b"raw"
        assert store.chunks.get(zdigest) == b"z" * 999
        new = hashlib.sha256(b"new").digest()
        store.chunks.put_many([(new, b"new")])
        with store.env.txn() as txn:
            assert unpack(txn.get(SCHEMA_VERSION_KEY, b"", db=store.env.db(META))) == 4
            assert txn.get(new, b"", db=store.env.db(CHUNKS))[:1] == bytes([CHUNK_FRAMES])


def test_data_file_stays_small_with_a_huge_map(root: Path) -> None:
    with open_store(root) as store:
        put(store, blob(3 * MiB))
        assert store.env.map_size == DEFAULT_MAP_SIZE
    data = root / "store.lmdb" / "data.mdb"
    assert data.stat().st_size < 16 * MiB
    assert data.stat().st_blocks * 512 < 16 * MiB


def test_map_full_is_a_store_error_and_the_store_survives(tmp_path: Path) -> None:
    with open_store(tmp_path / "small", map_size=2 * MiB) as store:
        with pytest.raises(StoreError, match=r"is full \(map size"):
            put(store, blob(3 * MiB))
        assert not store.content.exists(Digest.of(blob(3 * MiB)))
        assert put(store, b"small").size == 5


def test_opening_twice_shares_one_environment(root: Path) -> None:
    a = open_store(root)
    b = open_store(root)
    assert a.env is not b.env
    put(a, b"x")
    assert b.content.exists(Digest.of(b"x"))
    a.close()
    a.close()  # idempotent
    assert a.closed
    with pytest.raises(StoreError, match="is closed"):
        a.content.exists(Digest.of(b"x"))
    assert b.content.read(Digest.of(b"x")) == b"x"  # b unaffected
    b.close()
    with open_store(root) as c:  # the environment really closed: it reopens
        assert c.content.exists(Digest.of(b"x"))


def test_corrupt_record_is_a_store_error(store) -> None:
    with store.env.txn(write=True) as txn:
        txn.put(Digest.of(b"x").encode(), b"\xc1", db=store.env.db(CONTENT))
    with pytest.raises(StoreError, match="corrupt"):
        store.content.info(Digest.of(b"x"))


def test_inherited_store_is_unusable_after_fork(store, root: Path) -> None:
    put(store, b"x")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running any cleanup
        try:
            msgs = []
            for use in (lambda: store.content.exists(Digest.of(b"x")), lambda: open_store(root)):
                try:
                    use()
                    msgs.append("used")
                except StoreError as exc:
                    msgs.append(str(exc))
            os.write(w, "|".join(msgs).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    first, second = out.split("|")
    assert "opened before fork()" in first
    assert "opened before fork()" in second
    assert store.content.exists(Digest.of(b"x"))


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FUSESNAP_ROOT", str(tmp_path / "explicit"))
    assert default_root() == tmp_path / "explicit"
    monkeypatch.delenv("FUSESNAP_ROOT")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_root() == Path("/var/lib/fusesnap")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "fusesnap"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "home" / ".local" / "share" / "fusesnap"


def test_store_imports_no_async_or_network_code() -> None:
    proc = run_python(
        "import sys, fusesnap.store\n"
        "print(sorted(m for m in ('trio', 'httpx', 'pyfuse3') if m in sys.modules))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
