from __future__ import annotations

import os
import subprocess
import time

import pytest

from fusesnap.digest import Digest
from fusesnap.errors import AlreadyExistsError, InvalidDigestError, NotFoundError
from fusesnap.process import process_start_time
from fusesnap.store import LeaseRecord, Resource, Store
from fusesnap.store.leases import is_live

D = Digest.of(b"d")


def test_create_get_list_delete(store: Store) -> None:
    lease = store.leases.create(id="pull-1", labels={"ref": "alpine"})
    assert lease.expires is not None
    assert lease.expires == pytest.approx(time.time() + 24 * 3600, abs=60)
    assert store.leases.get("pull-1") == lease
    other = store.leases.create()
    assert other.id != lease.id
    assert {x.id for x in store.leases.list()} == {"pull-1", other.id}
    store.leases.delete("pull-1")
    with pytest.raises(NotFoundError, match=r"^lease pull-1: not found$"):
        store.leases.get("pull-1")
    with pytest.raises(NotFoundError):
        store.leases.delete("pull-1")


def test_duplicate_id(store: Store) -> None:
    store.leases.create(id="x")
    with pytest.raises(AlreadyExistsError, match="lease x: already exists"):
        store.leases.create(id="x")


def test_resources(store: Store) -> None:
    lease = store.leases.create(id="l")
    a, b = Resource.content(D), Resource.ingest(D)
    store.leases.add_resource("l", a)
    store.leases.add_resource("l", b)
    store.leases.add_resource("l", a)  # idempotent
    assert set(store.leases.get("l").resources) == {a, b}
    assert store.leases.remove_resource("l", a).resources == (b,)
    store.leases.remove_resource("l", a)  # not held: no-op
    assert store.leases.get("l").resources == (b,)
    assert store.leases.get("l").created == lease.created
    with pytest.raises(NotFoundError):
        store.leases.add_resource("missing", a)


def test_resource_validation() -> None:
    with pytest.raises(ValueError, match="kind"):
        Resource("blob", "x")
    with pytest.raises(InvalidDigestError):
        Resource("content", "sha256:nothex")
    assert Resource("image", "alpine").node() == ("image", "alpine")


def test_expiry(store: Store) -> None:
    lease = store.leases.create(expires_in=10)
    assert store.leases.is_live(lease, time.time())
    assert not is_live(lease, time.time() + 11)
    forever = store.leases.create(expires_in=None)
    assert is_live(forever, time.time() + 10 * 365 * 86400)


def test_owner_pid_dead_means_not_live(store: Store) -> None:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        lease = store.leases.create(owner_pid=proc.pid, expires_in=None)
        assert lease.owner_start == process_start_time(proc.pid)
        assert is_live(lease)
    finally:
        proc.kill()
    # Not reaped yet: a zombie, which is dead already (the signal lands async).
    deadline = time.monotonic() + 5
    while is_live(lease) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not is_live(lease)
    proc.wait()
    assert not is_live(lease)
    assert not is_live(store.leases.get(lease.id))


def test_recycled_pid_is_not_the_owner() -> None:
    me = os.getpid()
    start = process_start_time(me)
    assert start is not None
    lease = LeaseRecord(id="x", created=0, expires=None, owner_pid=me, owner_start=start - 1)
    assert not is_live(lease)
    assert is_live(LeaseRecord(id="y", created=0, expires=None, owner_pid=me, owner_start=start))


def test_owner_must_exist(store: Store) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(NotFoundError, match=f"process {proc.pid}: not found"):
        store.leases.create(owner_pid=proc.pid)


def test_lease_context_manager(store: Store) -> None:
    with store.leases.lease(owner_pid=os.getpid()) as lease:
        assert store.leases.get(lease.id).owner_pid == os.getpid()
    assert store.leases.list() == []
    with pytest.raises(RuntimeError), store.leases.lease() as lease:
        raise RuntimeError
    assert store.leases.list() == []
