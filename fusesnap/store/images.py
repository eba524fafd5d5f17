"""Images: names that point at content (containerd's image store).

An image record holds pointers only; its bytes are content, which the
garbage collector keeps for as long as some image (or lease) reaches it.
Removing an image therefore frees nothing by itself: gc does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

from fusesnap.errors import NotFoundError
from fusesnap.store.blobs import Txn
from fusesnap.store.env import Env
from fusesnap.store.records import ImageRecord, get_record, iter_records
from fusesnap.store.schema import IMAGES, image_key, pack
from fusesnap.store.table import RecordTable


def get_image(txn: Txn, env: Env, name: str) -> ImageRecord | None:
    return get_record(txn, env.db(IMAGES), image_key(name), ImageRecord)


def iter_images(txn: Txn, env: Env) -> Iterator[ImageRecord]:
    """Every image, within one transaction (for gc's mark phase)."""
    return iter_records(txn, env.db(IMAGES), ImageRecord)


def _not_found(name: str) -> NotFoundError:
    return NotFoundError(f"image {name}: not found")


class ImageStore(RecordTable[ImageRecord]):
    """Create, read, update and delete image records."""

    def __init__(self, env: Env) -> None:
        super().__init__(env, IMAGES, ImageRecord, image_key, "image")

    def put(self, record: ImageRecord) -> ImageRecord:
        """Create or update ``record.name``; return what was stored.

        An update keeps the existing `created`; `updated` is always now.
        A pull writes its image record *before* deleting its lease, so that
        gc never sees the pulled content unreferenced.
        """
        now = time.time()
        key = image_key(record.name)
        with self._env.txn(write=True) as txn:
            old = get_image(txn, self._env, record.name)
            created = old.created if old else (record.created or now)
            stored = dataclasses.replace(record, created=created, updated=now)
            txn.put(key, pack(stored.to_record()), db=self._env.db(IMAGES))
        return stored

    def delete(self, name: str) -> ImageRecord:
        """Remove the record (not its content); return it."""
        with self._env.txn(write=True) as txn:
            record = get_image(txn, self._env, name)
            if record is not None:
                txn.delete(image_key(name), db=self._env.db(IMAGES))
        if record is None:
            raise _not_found(name)
        return record
