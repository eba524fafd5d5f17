"""`open_store`: the content store, images and leases of one root directory."""

from __future__ import annotations

import os
from pathlib import Path

from fusesnap.store.cache import StoreCache
from fusesnap.store.chunks import ChunkStore
from fusesnap.store.content import ContentStore
from fusesnap.store.env import DEFAULT_MAP_SIZE, Closing, Env, open_env
from fusesnap.store.images import ImageStore
from fusesnap.store.layers import LayerStore
from fusesnap.store.leases import LeaseManager
from fusesnap.store.snapshots import ContainerStore, SnapshotStore


def default_root() -> Path:
    """``$FUSESNAP_ROOT``; else ``/var/lib/fusesnap`` as root; else
    ``$XDG_DATA_HOME/fusesnap`` (``~/.local/share/fusesnap``)."""
    explicit = os.environ.get("FUSESNAP_ROOT")
    if explicit:
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/fusesnap")
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "fusesnap"


class Store(Closing):
    """The store under one root: `content`, `images`, `leases`, `layers`,
    `chunks` (and their `cache` limit), `snapshots` and `containers`.

    Close it (or use it as a context manager). Several `Store` objects for
    one root may be open in a process; they share one LMDB environment.
    Methods are synchronous and short; call them from a worker thread in
    async code (see `fusesnap.blocking`). Each method is its own
    transaction; thread-safe.
    """

    def __init__(self, env: Env) -> None:
        self.env = env  # for modules of this package (gc)
        self.root = env.root
        self.content = ContentStore(env)
        self.images = ImageStore(env)
        self.leases = LeaseManager(env)
        self.layers = LayerStore(env)
        self.cache = StoreCache(env)
        self.chunks = ChunkStore(env, policy=self.cache)
        self.snapshots = SnapshotStore(env)
        self.containers = ContainerStore(env)

    @property
    def closed(self) -> bool:
        return self.env.closed

    def close(self) -> None:
        """Idempotent; the environment closes with the last open `Store`."""
        self.env.close()

    def __repr__(self) -> str:
        return f"<Store {self.root}{' closed' if self.closed else ''}>"


def open_store(root: Path | str, *, map_size: int = DEFAULT_MAP_SIZE) -> Store:
    """Open the store under ``root``, creating it if needed.

    Raises `StoreError` if it cannot be opened, or was written by a newer
    fusesnap (its schema version is higher than this one understands).
    """
    return Store(open_env(Path(root), map_size=map_size))
