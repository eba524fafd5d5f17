"""Leases: holds on resources so that gc spares them while work is in flight
(containerd's lease manager).

A pull follows containerd's order so that gc never sees a window where its
content is unreferenced:

1. create a lease (owned by the pulling process, with an expiry);
2. add ``("content", digest)`` to it *before* fetching each blob — also when
   the blob is already stored, since gc may be about to delete it — and
   ``("ingest", digest)`` to keep a partial download across a crash;
   for a layer stored as index + chunks, ``("layer", digest)`` before its
   first chunk is stored (until that layer's record exists, gc then sweeps
   no chunk at all: see `collect`);
3. write the image record;
4. delete the lease.

A live lease protects its resources even if they are not in the store yet.

A lease dies when it expires, or when its owner process is gone: the owner
is recorded as (pid, start time from /proc/PID/stat), because pids are
reused. Dead leases are deleted by `collect_garbage`. Pids are those of the
pid namespace that reads them; a lease shared across namespaces should rely
on its expiry, not an owner.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import TypedDict, Unpack

from fusesnap.errors import AlreadyExistsError, NotFoundError
from fusesnap.process import process_start_time
from fusesnap.store.blobs import Txn
from fusesnap.store.env import Env
from fusesnap.store.records import LeaseRecord, Resource, get_record, iter_records
from fusesnap.store.schema import LEASES, lease_key, pack
from fusesnap.store.table import RecordTable

DEFAULT_EXPIRY = 24 * 3600.0


class LeaseOptions(TypedDict, total=False):
    """What `LeaseManager.create` takes (and `LeaseManager.lease` passes on)."""

    id: str | None
    expires_in: float | None
    labels: dict[str, str] | None
    owner_pid: int | None


def is_live(lease: LeaseRecord, now: float | None = None) -> bool:
    """Not expired, and its owner (if any) still runs."""
    now = time.time() if now is None else now
    if lease.expires is not None and lease.expires <= now:
        return False
    if lease.owner_pid is None:
        return True
    start = process_start_time(lease.owner_pid)
    return start is not None and (lease.owner_start is None or start == lease.owner_start)


def get_lease(txn: Txn, env: Env, lease_id: str) -> LeaseRecord | None:
    return get_record(txn, env.db(LEASES), lease_key(lease_id), LeaseRecord)


def iter_leases(txn: Txn, env: Env) -> Iterator[LeaseRecord]:
    """Every lease, within one transaction (for gc)."""
    return iter_records(txn, env.db(LEASES), LeaseRecord)


def delete_lease(txn: Txn, env: Env, lease_id: str) -> bool:
    return bool(txn.delete(lease_key(lease_id), db=env.db(LEASES)))


def _not_found(lease_id: str) -> NotFoundError:
    return NotFoundError(f"lease {lease_id}: not found")


class LeaseManager(RecordTable[LeaseRecord]):
    """Create, inspect, change and delete leases."""

    def __init__(self, env: Env) -> None:
        super().__init__(env, LEASES, LeaseRecord, lease_key, "lease")

    is_live = staticmethod(is_live)

    def create(
        self,
        *,
        id: str | None = None,
        expires_in: float | None = DEFAULT_EXPIRY,
        labels: dict[str, str] | None = None,
        owner_pid: int | None = None,
    ) -> LeaseRecord:
        """A new lease; ``id`` is random unless given (`AlreadyExistsError`
        if taken). ``expires_in=None`` never expires: give such a lease an
        owner, or it holds its resources until deleted by hand.
        `NotFoundError` if ``owner_pid`` does not run."""
        now = time.time()
        owner_start = None
        if owner_pid is not None:
            owner_start = process_start_time(owner_pid)
            if owner_start is None:
                raise NotFoundError(f"process {owner_pid}: not found")
        record = LeaseRecord(
            id=id if id is not None else f"lease-{secrets.token_hex(8)}",
            created=now,
            expires=None if expires_in is None else now + expires_in,
            labels=dict(labels or {}),
            owner_pid=owner_pid,
            owner_start=owner_start,
        )
        key = lease_key(record.id)
        with self._env.txn(write=True) as txn:
            if txn.get(key, db=self._env.db(LEASES)) is not None:
                raise AlreadyExistsError(f"lease {record.id}: already exists")
            txn.put(key, pack(record.to_record()), db=self._env.db(LEASES))
        return record

    def _update(self, id: str, resources: Iterable[Resource], *, add: bool) -> LeaseRecord:
        with self._env.txn(write=True) as txn:
            record = get_lease(txn, self._env, id)
            if record is None:
                raise _not_found(id)
            held = set(record.resources)
            if add:
                held.update(resources)
            else:
                held.difference_update(resources)
            record = dataclasses.replace(record, resources=tuple(sorted(held)))
            txn.put(lease_key(id), pack(record.to_record()), db=self._env.db(LEASES))
        return record

    def add_resource(self, id: str, resource: Resource) -> LeaseRecord:
        """Hold ``resource`` (idempotent); return the updated lease."""
        return self._update(id, (resource,), add=True)

    def add_resources(self, id: str, resources: Iterable[Resource]) -> LeaseRecord:
        """Hold every one of ``resources``, in one write; return the updated lease."""
        return self._update(id, resources, add=True)

    def remove_resource(self, id: str, resource: Resource) -> LeaseRecord:
        """Stop holding ``resource`` (no-op if not held); return the lease."""
        return self._update(id, (resource,), add=False)

    def delete(self, id: str) -> None:
        with self._env.txn(write=True) as txn:
            found = delete_lease(txn, self._env, id)
        if not found:
            raise _not_found(id)

    @contextmanager
    def lease(self, **options: Unpack[LeaseOptions]) -> Iterator[LeaseRecord]:
        """A lease made by `create` with ``options``, for the duration of a block, deleted
        on exit (even on error). Write the image record inside the block, not after it."""
        record = self.create(**options)
        try:
            yield record
        finally:
            with suppress(NotFoundError):  # gc may have reaped it if it expired
                self.delete(record.id)
