from __future__ import annotations

import time

import pytest

from fusesnap.digest import Digest
from fusesnap.errors import NotFoundError, StoreError
from fusesnap.store import ImageRecord, Store

from .helpers import image

A = Digest.of(b"a")
B = Digest.of(b"b")


def test_put_get_list_delete(store: Store) -> None:
    before = time.time()
    stored = store.images.put(image("example.com/app:1", A))
    assert stored.created >= before
    assert stored.updated == stored.created
    assert store.images.get("example.com/app:1") == stored
    assert store.images.exists("example.com/app:1")
    store.images.put(image("example.com/app:0", B))
    assert [r.name for r in store.images.list()] == ["example.com/app:0", "example.com/app:1"]

    removed = store.images.delete("example.com/app:1")
    assert removed == stored
    assert [r.name for r in store.images.list()] == ["example.com/app:0"]


def test_update_keeps_created_and_bumps_updated(store: Store) -> None:
    first = store.images.put(image("app", A))
    time.sleep(0.01)
    second = store.images.put(image("app", B))
    assert second.created == first.created
    assert second.updated > first.updated
    assert store.images.get("app").target_digest == B
    assert len(store.images.list()) == 1


def test_record_fields_round_trip(store: Store) -> None:
    record = ImageRecord(
        name="registry.local:5000/x/y@sha256:" + "0" * 64,
        target_digest=A,
        target_media_type="application/vnd.oci.image.index.v1+json",
        target_size=1234,
        manifest_digest=B,
        platform="linux/arm64/v8",
    )
    stored = store.images.put(record)
    got = store.images.get(record.name)
    assert got == stored
    assert (got.target_size, got.platform, got.manifest_digest) == (1234, "linux/arm64/v8", B)
    assert isinstance(got.target_digest, Digest)


def test_missing_image(store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"^image nope: not found$"):
        store.images.get("nope")
    with pytest.raises(NotFoundError, match=r"^image nope: not found$"):
        store.images.delete("nope")
    assert not store.images.exists("nope")


def test_unusable_name_is_a_store_error(store: Store) -> None:
    with pytest.raises(StoreError, match="not usable as a store key"):
        store.images.put(image("x" * 600, A))
