"""Other processes: concurrent readers, and writers killed at random moments."""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fusesnap.digest import Digest
from fusesnap.store import Store, collect_garbage, open_store
from fusesnap.store import blobs as blobs_module

from .helpers import REPO, put

READER = """
import sys
from fusesnap.digest import Digest
from fusesnap.store import open_store
with open_store(sys.argv[1]) as s:
    print("open", flush=True)
    for line in sys.stdin:
        d = Digest(line.strip())
        ok = s.content.exists(d) and Digest.of(s.content.read(d)) == d
        print("yes" if ok else "no", flush=True)
"""


def test_other_process_reads_while_this_one_writes(store: Store) -> None:
    a = put(store, b"committed before").digest
    b_data = b"committed later"
    b = Digest.of(b_data)
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, str(store.root)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None

    def ask(digest: Digest) -> str:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write(digest + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    try:
        assert proc.stdout.readline().strip() == "open"
        with store.env.txn(write=True) as txn:  # hold LMDB's writer lock
            blobs_module.put_blob(txn, store.env, b, [b_data], media_type="x")
            assert ask(a) == "yes"  # not blocked by the writer
            assert ask(b) == "no"  # and does not see uncommitted data
        assert ask(b) == "yes"
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0


WRITER = """
import os, random, sys
from fusesnap.digest import Digest
from fusesnap.store import ImageRecord, Resource, collect_garbage, open_store

def blob(k):
    r = random.Random(k)
    return r.randbytes(r.choice([100, 70_000, 1_500_000, 2_600_000]))

with open_store(sys.argv[1]) as s:
    print("ready", flush=True)
    k = int(sys.argv[2])
    while True:
        data = blob(k % 20)
        d = Digest.of(data)
        with s.leases.lease(owner_pid=os.getpid()) as lease:
            s.leases.add_resource(lease.id, Resource.content(d))
            s.leases.add_resource(lease.id, Resource.ingest(d))
            if not s.content.exists(d):
                with s.content.writer(d, size=len(data), media_type="x", wait=10) as w:
                    for i in range(w.offset, len(data), 65536):
                        w.write(data[i : i + 65536])
                    w.commit()
            s.images.put(ImageRecord(
                name=f"img{k % 7}", target_digest=d, target_media_type="x",
                target_size=len(data), manifest_digest=d, platform="linux/amd64"))
        if k % 5 == 4:
            collect_garbage(s)
        k += 1
"""


def writer_blob(k: int) -> bytes:
    r = random.Random(k)
    return r.randbytes(r.choice([100, 70_000, 1_500_000, 2_600_000]))


def check_every_blob(store: Store) -> int:
    count = 0
    for info in store.content.list():
        h = info.digest.hasher()
        size = 0
        for piece in store.content.iter_bytes(info.digest):
            h.update(piece)
            size += len(piece)
        assert f"{info.digest.algorithm}:{h.hexdigest()}" == info.digest
        assert size == info.size
        count += 1
    return count


def test_writer_killed_at_random_moments_leaves_a_consistent_store(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rng = random.Random(20240601)
    for round_ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(round_ * 3)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        delay = rng.uniform(0.05, 1.0)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"round {round_}: writer died on its own"

        with open_store(root) as store:
            check_every_blob(store)
            # Re-ingest everything; partial files left by the killed writer resume.
            for k in range(20):
                data = writer_blob(k)
                digest = Digest.of(data)
                if store.content.exists(digest):
                    continue
                with store.content.writer(digest, size=len(data), media_type="x") as w:
                    w.write(data[w.offset :])
                    w.commit()
                assert store.content.read(digest) == data
            result = collect_garbage(store)
            assert store.leases.list() == [], f"round {round_} (delay {delay:.2f})"
            assert store.content.ingests() == []
            assert all(lease.owner_pid == proc.pid for lease in result.removed_leases)
            for image in store.images.list():
                assert store.content.exists(image.target_digest)
            assert check_every_blob(store) == len({i.target_digest for i in store.images.list()})


LAYER_WRITER = """
import hashlib, json, os, random, sys
from fusesnap.digest import Digest
from fusesnap.store import (
    ImageRecord, LayerRecord, Resource, collect_garbage, open_store, pack_chunk_digests)

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"

def chunk_data(i):
    r = random.Random(i)
    if i % 2:
        return r.randbytes(r.choice([1000, 300_000, 1_048_576]))
    return b"text chunk %d " % i * r.choice([10, 70_000])

with open_store(sys.argv[1]) as s:
    print("ready", flush=True)
    k = int(sys.argv[2])
    while True:
        n = k % 9
        layer = Digest.of(b"layer %d" % n)
        with s.leases.lease(owner_pid=os.getpid()) as lease:
            s.leases.add_resource(lease.id, Resource.layer(layer))
            ids = random.Random(n).sample(range(60), 12)  # layers share chunks
            items = [(hashlib.sha256(d).digest(), d) for d in map(chunk_data, ids)]
            for i in range(0, len(items), 4):
                s.chunks.put_many(items[i : i + 4])
            s.layers.put(LayerRecord(
                digest=layer, diff_id=layer, media_type="x", size=1, uncompressed_size=1,
                entry_count=1, source="built", index=b"index %d" % n,
                chunks=pack_chunk_digests(d for d, _ in items)))
            config = b'{"n": %d}' % n
            cfg = s.content.put(config, digest=Digest.of(config), media_type=CONFIG)
            doc = json.dumps({
                "schemaVersion": 2, "mediaType": MANIFEST,
                "config": {"mediaType": CONFIG, "digest": cfg.digest, "size": cfg.size},
                "layers": [{"mediaType": "x", "digest": layer, "size": 1}],
            }).encode()
            m = s.content.put(doc, digest=Digest.of(doc), media_type=MANIFEST)
            s.images.put(ImageRecord(
                name=f"img{k % 5}", target_digest=m.digest, target_media_type=MANIFEST,
                target_size=m.size, manifest_digest=m.digest, platform="linux/amd64"))
        if k % 4 == 3:
            collect_garbage(s)
        k += 1
"""


def test_chunk_writer_killed_at_random_moments_leaves_a_consistent_store(tmp_path: Path) -> None:
    root = tmp_path / "root"
    rng = random.Random(20240602)
    for round_ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", LAYER_WRITER, str(root), str(round_ * 7)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        delay = rng.uniform(0.05, 1.5)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"round {round_}: writer died on its own"

        with open_store(root) as store:
            collect_garbage(store)
            assert store.leases.list() == [], f"round {round_} (delay {delay:.2f})"
            stored = set(store.chunks.iter_digests())
            for digest in stored:
                assert hashlib.sha256(store.chunks.get(digest)).digest() == digest
            listed: set[bytes] = set()
            for info in store.layers.list():
                listed.update(store.layers.chunk_digests(info.digest))
            assert stored == listed  # nothing unreferenced left, nothing missing
            for image in store.images.list():
                manifest = json.loads(store.content.read(image.manifest_digest))
                layer = Digest(manifest["layers"][0]["digest"])
                presence = store.layers.present_chunks(layer)
                assert presence.present == presence.total == 12
