"""collect_garbage on a real store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fusesnap.digest import Digest
from fusesnap.oci import OCI_MANIFEST
from fusesnap.store import GCResult, Resource, Store, collect_garbage
from fusesnap.store import collect as collect_module

from .helpers import MiB, blob, image, put, put_index, put_manifest


def stored(store: Store) -> set[Digest]:
    return {i.digest for i in store.content.list()}


def removed(result: GCResult) -> set[Digest]:
    return {i.digest for i in result.removed_content}


def two_images(store: Store) -> dict[str, Any]:
    shared, only_a, only_b = blob(2 * MiB, 1), blob(1000, 2), blob(3000, 3)
    cfg_a, cfg_b = b'{"a": 1}', b'{"b": 2}'
    m_a = put_manifest(store, cfg_a, [shared, only_a])
    m_b = put_manifest(store, cfg_b, [shared, only_b])
    store.images.put(image("a", m_a))
    store.images.put(image("b", m_b))
    return {
        "m_a": m_a,
        "m_b": m_b,
        "shared": Digest.of(shared),
        "cfg_b": Digest.of(cfg_b),
        "only_b": Digest.of(only_b),
    }


def test_nothing_to_collect(store: Store) -> None:
    two_images(store)
    before = stored(store)
    result = collect_garbage(store)
    assert result.removed_content == result.removed_leases == result.removed_ingests == ()
    assert stored(store) == before


def test_rmi_frees_only_unique_content(store: Store) -> None:
    d = two_images(store)
    before = stored(store)
    store.images.delete("b")
    result = collect_garbage(store)
    assert removed(result) == {d["m_b"], d["cfg_b"], d["only_b"]}
    assert stored(store) == before - removed(result)
    assert d["shared"] in stored(store)
    assert result.bytes_freed == sum(i.size for i in result.removed_content)
    assert result.bytes_freed >= 3000
    for digest in stored(store):
        assert Digest.of(store.content.read(digest)) == digest
    assert collect_garbage(store).removed_content == ()  # converged


def test_dry_run_changes_nothing(store: Store) -> None:
    d = two_images(store)
    store.images.delete("b")
    lease = store.leases.create(expires_in=-1)
    before = stored(store)
    result = collect_garbage(store, dry_run=True)
    assert result.dry_run
    assert removed(result) == {d["m_b"], d["cfg_b"], d["only_b"]}
    assert [x.id for x in result.removed_leases] == [lease.id]
    assert stored(store) == before
    assert [x.id for x in store.leases.list()] == [lease.id]


def test_index_keeps_its_manifests_and_their_children(store: Store) -> None:
    m = put_manifest(store, b'{"c": 1}', [blob(100, 5)])
    index = put_index(store, [m, Digest.of(b"other platform, never pulled")])
    store.images.put(image("multi", index, m))
    put(store, b"junk")
    result = collect_garbage(store)
    assert removed(result) == {Digest.of(b"junk")}
    assert {index, m, Digest.of(b'{"c": 1}'), Digest.of(blob(100, 5))} <= stored(store)


def test_platform_manifest_kept_when_target_index_is_not_stored(store: Store) -> None:
    m = put_manifest(store, b'{"c": 1}', [blob(100, 6)])
    store.images.put(image("x", Digest.of(b"index not stored"), m))
    assert collect_garbage(store).removed_content == ()


def test_live_lease_protects_content_even_before_it_is_stored(store: Store) -> None:
    layer = blob(1000, 7)
    with store.leases.lease() as lease:
        manifest_doc = b"later"  # digest known before the bytes arrive
        store.leases.add_resource(lease.id, Resource.content(Digest.of(manifest_doc)))
        store.leases.add_resource(lease.id, Resource.content(Digest.of(layer)))
        assert collect_garbage(store).removed_content == ()
        put(store, layer)
        put(store, manifest_doc)
        assert collect_garbage(store).removed_content == ()
        assert stored(store) == {Digest.of(layer), Digest.of(manifest_doc)}
    assert removed(collect_garbage(store)) == {Digest.of(layer), Digest.of(manifest_doc)}


def test_lease_on_a_manifest_protects_its_children(store: Store) -> None:
    m = put_manifest(store, b"{}", [blob(10, 8)])
    lease = store.leases.create()
    store.leases.add_resource(lease.id, Resource.content(m))
    assert collect_garbage(store).removed_content == ()


def test_lease_on_an_image_protects_it(store: Store) -> None:
    m = put_manifest(store, b"{}", [])
    store.images.put(image("gone", m))
    lease = store.leases.create()
    store.leases.add_resource(lease.id, Resource.image("gone"))
    store.images.delete("gone")
    # the image record is gone, so the lease reaches nothing through it
    assert removed(collect_garbage(store)) == {m, Digest.of(b"{}")}


def test_expired_and_dead_owner_leases_do_not_protect(store: Store) -> None:
    keep, gone = put(store, b"keep").digest, put(store, b"gone").digest
    live = store.leases.create(id="live", expires_in=60)
    expired = store.leases.create(id="expired", expires_in=60)
    store.leases.add_resource(live.id, Resource.content(keep))
    store.leases.add_resource(expired.id, Resource.content(gone))
    result = collect_garbage(store, now=time.time() + 30)  # neither expired yet
    assert result.removed_content == ()
    assert result.removed_leases == ()

    store.leases.delete("expired")
    store.leases.create(id="expired", expires_in=0.5)
    store.leases.add_resource("expired", Resource.content(gone))
    time.sleep(0.6)
    result = collect_garbage(store)
    assert [x.id for x in result.removed_leases] == ["expired"]
    assert removed(result) == {gone}
    assert stored(store) == {keep}
    assert [x.id for x in store.leases.list()] == ["live"]


def test_ingests_protected_by_live_lease_or_lock(store: Store) -> None:
    def partial(data: bytes) -> Digest:
        digest = Digest.of(data)
        with store.content.writer(digest, size=len(data), media_type="x") as w:
            w.write(data[:3])
        return digest

    leased_ingest = partial(b"leased as ingest")
    leased_content = partial(b"leased as content")
    expired = partial(b"expired lease")
    orphan = partial(b"nobody wants me")
    locked_data = b"a writer has me"
    live = store.leases.create()
    store.leases.add_resource(live.id, Resource.ingest(leased_ingest))
    store.leases.add_resource(live.id, Resource.content(leased_content))
    old = store.leases.create(expires_in=-1)
    store.leases.add_resource(old.id, Resource.ingest(expired))

    with store.content.writer(Digest.of(locked_data), size=15, media_type="x") as w:
        w.write(b"a w")
        result = collect_garbage(store)
        assert {i.digest for i in result.removed_ingests} == {expired, orphan}
        assert result.bytes_freed == 6
        left = {i.digest for i in store.content.ingests()}
        assert left == {leased_ingest, leased_content, Digest.of(locked_data)}
        w.write(locked_data[3:])
        w.commit()


def test_subject_is_not_followed(store: Store) -> None:
    m = put_manifest(store, b"{}", [blob(10, 9)])
    subject = {"mediaType": OCI_MANIFEST, "digest": m, "size": store.content.info(m).size}
    referrer = put_manifest(store, b'{"index": true}', [blob(20, 10)], subject=subject)
    store.images.put(image("referrer", referrer))
    result = collect_garbage(store)
    # the referrer and its own children stay; the image it refers to does not
    assert removed(result) == {m, Digest.of(blob(10, 9)), Digest.of(b"{}")}
    assert stored(store) == {referrer, Digest.of(blob(20, 10)), Digest.of(b'{"index": true}')}


def test_artifact_manifest_children_are_followed(store: Store) -> None:
    part = put(store, b"artifact blob").digest
    doc = {
        "mediaType": collect_module.ARTIFACT_MANIFEST,
        "artifactType": "x",
        "blobs": [{"mediaType": "x", "digest": part, "size": 13}],
    }
    art = put(store, json.dumps(doc).encode(), collect_module.ARTIFACT_MANIFEST).digest
    store.images.put(image("art", art))
    assert collect_garbage(store).removed_content == ()


def test_unparseable_manifest_does_not_stop_gc(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    bad = put(store, b"{not json", OCI_MANIFEST).digest
    store.images.put(image("bad", bad))
    put(store, b"junk")
    result = collect_garbage(store)
    assert removed(result) == {Digest.of(b"junk")}
    assert bad in stored(store)
    assert "not valid JSON" in caplog.text


def test_many_deletions_in_batches(store: Store) -> None:
    digests = {put(store, str(i).encode()).digest for i in range(1000)}
    m = put_manifest(store, b"{}", [])
    store.images.put(image("keep", m))
    result = collect_garbage(store, batch_size=64)
    assert removed(result) == digests
    assert stored(store) == {m, Digest.of(b"{}")}


def test_content_taken_up_after_the_first_mark_is_spared(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull that starts using a doomed blob between gc's first mark and its
    sweep (another image sharing a layer) must win."""
    d = two_images(store)
    store.images.delete("b")
    real_iter_infos = collect_module.iter_infos

    def iter_infos_then_pull(txn: Any, env: Any) -> Iterator[Any]:
        yield from real_iter_infos(txn, env)
        store.images.put(image("b-again", d["m_b"]))  # commits before the sweep

    monkeypatch.setattr(collect_module, "iter_infos", iter_infos_then_pull)
    result = collect_garbage(store, batch_size=1)
    assert result.removed_content == ()
    assert {d["m_b"], d["cfg_b"], d["only_b"]} <= stored(store)
