"""The mount daemon: one image served at one directory until unmounted or signalled.

`serve_image` is what ``fusesnap mount --foreground`` runs (and what the
background ``mount`` starts as a fresh ``python -m fusesnap`` process, so the
LMDB store is opened after no fork). In order:

1. clear a stale mount at DIR (its daemon died), refuse a live one;
2. open the store and the image; refuse an image that is not in it, or not whole;
3. take a lease owned by this process on the image's manifest, config and
   layers, so ``gc`` spares them while it runs (a killed daemon's lease dies
   with it);
4. build the merged tree, mount it (``ro``, ``default_permissions``), and
   answer FUSE requests and the control socket on one trio loop; on a lazy
   mount, once ready, fetch in the background what the start will read
   (``prefetch``: eStargz landmark files, then the image's recorded access
   profile, `fusesnap.lazy.profile`; ``all``: then everything);
5. on SIGTERM/SIGINT/SIGHUP, or when DIR is unmounted from outside: stop,
   unmount, drop the lease, remove the state file; with ``record``, store the
   access profile of what was read (replacing the image's previous one).

Readiness: ``on_ready("ready")`` once the kernel can send requests, or
``on_ready("error: ...")`` if a step before that failed (then the error is
raised too).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

from fusesnap.errors import FusesnapError, NotFoundError
from fusesnap.fs import Node
from fusesnap.fuse import (
    DEFAULT_MAX_BYTES,
    ChunkCache,
    FuseOperations,
    ImageSource,
    fuse_session,
    mount_options,
    serve,
    terminate,
)
from fusesnap.image import ImageView
from fusesnap.index import ChunkRef, Entry, LayerIndex
from fusesnap.lazy import LazyChunks
from fusesnap.lazy import profile as profiles
from fusesnap.mountd.control import serve_control
from fusesnap.mountd.mountpoint import MountError, detach, is_stale, mount_info
from fusesnap.mountd.state import (
    CONTROL_SOCKET,
    MountState,
    make_state_dir,
    process_start_time,
)
from fusesnap.pull import layer_complete, open_registry_fetcher
from fusesnap.reference import Reference
from fusesnap.registry import RegistryOptions
from fusesnap.store import Resource, Store, open_store

__all__ = ["check_image", "prepare_mountpoint", "serve_image"]

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def check_image(store: Store, ref: str) -> ImageView:
    """The stored image ``ref``, every layer of it indexed (``pull`` or ``pull --lazy``).

    `NotFoundError` (one line, saying to pull) if it is not in the store or a
    layer has no index. Chunks need not be local: a lazy mount fetches them.
    """
    view = ImageView.open(store, ref)
    for n, layer in enumerate(view.layers):
        if not store.layers.exists(layer.digest):
            raise NotFoundError(
                f"image {view.record.name}: layer {n} ({layer.digest.short}) is not in the "
                f"store (run: fusesnap pull {ref})"
            )
    return view


def prepare_mountpoint(mountpoint: str | os.PathLike[str]) -> Path:
    """``mountpoint`` as an absolute path, ready to mount on: a stale FUSE mount there
    is detached; `MountError` if it is not a directory or something live is mounted."""
    target = Path(os.path.abspath(mountpoint))
    if is_stale(target):
        log.info("%s: clearing a stale mount (its daemon is gone)", target)
        detach(target, lazy=True)
    if not target.is_dir():
        raise MountError(f"{target}: not a directory")
    info = mount_info(target)
    if info is not None:
        raise MountError(
            f"{target}: already mounted ({info.fstype} from {info.source}); "
            f"run: fusesnap umount {target}"
        )
    return target


def _resources(view: ImageView) -> list[Resource]:
    return [
        Resource.content(view.record.manifest_digest),
        Resource.content(view.manifest.config.digest),
        *(Resource.layer(layer.digest) for layer in view.layers),
    ]


def drop_stale_state(store: Store, directory: Path) -> None:
    """Forget a previous mount of this directory whose daemon is gone (its lease too)."""
    old = MountState.load(directory)
    if old is None or old.daemon_alive():
        return
    with suppress(NotFoundError):
        store.leases.delete(old.lease_id)
    MountState.remove(directory)


@contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGTERM/SIGINT/SIGHUP from mount until the loop listens for them, so a
    signal in between unmounts cleanly instead of leaving a stale mount."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)


@contextmanager
def _reported(on_ready: Callable[[str], None]) -> Iterator[None]:
    """Tell the starter about an error before it propagates (it waits for a line)."""
    try:
        yield
    except FusesnapError as exc:
        on_ready(f"error: {exc}")
        raise


@contextmanager
def _mounted(
    ops: FuseOperations, target: Path, *, allow_other: bool, on_ready: Callable[[str], None]
) -> Iterator[None]:
    """`fuse_session`, with a failure to mount reported to the starter."""
    session = fuse_session(ops, target, mount_options(allow_other=allow_other))
    with _reported(on_ready):
        try:
            session.__enter__()
        except RuntimeError as exc:  # libfuse has printed why to stderr (the log)
            raise MountError(f"{target}: mount failed ({exc}; see the log)") from exc
    try:
        yield
    finally:
        session.__exit__(None, None, None)


def serve_image(
    root: Path,
    ref: str,
    mountpoint: str | os.PathLike[str],
    *,
    allow_other: bool = False,
    cache_bytes: int = DEFAULT_MAX_BYTES,
    on_ready: Callable[[str], None] = lambda message: None,
    registry: RegistryOptions | None = None,
    prefetch: str | bool = "auto",
    record: bool = False,
) -> None:
    """Serve image ``ref`` of the store at ``root`` on ``mountpoint`` until unmounted or
    signalled (module docstring). Blocks; runs its own trio loop.

    ``prefetch`` (`PREFETCH_MODES`): ``none`` fetches nothing ahead; ``auto`` the
    landmark files and the recorded profile, if any; ``profile`` the same, warning
    if there is no profile; ``all`` those, then every chunk (True/False: all/none).
    ``record``: write the access profile of this mount at unmount.
    """
    mode = ("all" if prefetch else "none") if isinstance(prefetch, bool) else prefetch
    if mode not in PREFETCH_MODES:
        raise ValueError(f"prefetch {mode!r}: expected one of {PREFETCH_MODES}")
    with _reported(on_ready):
        target = prepare_mountpoint(mountpoint)
        directory = make_state_dir(root, target)
        store = open_store(root)
    with store:
        drop_stale_state(store, directory)
        labels = {"fusesnap.mount": str(target), "fusesnap.image": str(ref)}
        with store.leases.lease(owner_pid=os.getpid(), expires_in=None, labels=labels) as lease:
            with _reported(on_ready):
                view = check_image(store, ref)
                for resource in _resources(view):
                    store.leases.add_resource(lease.id, resource)
                lazy = _lazy_chunks(store, view)
                cache = ChunkCache(
                    store.chunks,
                    max_bytes=cache_bytes,
                    load=None if lazy is None else lazy.get,
                )
                ops = FuseOperations(ImageSource(view.tree(), cache))
                recorder = profiles.Recorder() if record else None
                if recorder is not None:
                    cache.on_access = recorder.note
                plan = PrefetchPlan(mode=mode)
                if lazy is not None and mode != "none":
                    plan.profile = profiles.load(store, str(view.record.manifest_digest))
                    if plan.profile is None and mode == "profile":
                        log.warning("%s: no access profile recorded for this image", ref)
            state = MountState(
                mountpoint=str(target),
                image=view.record.name,
                manifest_digest=str(view.record.manifest_digest),
                pid=os.getpid(),
                pid_start=process_start_time(os.getpid()),
                lease_id=lease.id,
                started=time.time(),
            )
            state.save(directory)
            try:
                with (
                    _signals_blocked(),
                    _mounted(ops, target, allow_other=allow_other, on_ready=on_ready),
                ):
                    trio.run(_main, ops, cache, state, directory, on_ready, lazy, registry, plan)
                log.info("%s: unmounted", target)
                if recorder is not None:
                    _save_profile(store, view, recorder)
            finally:
                MountState.remove(directory)


PREFETCH_MODES = ("none", "auto", "profile", "all")
# Opened files up to this size are fetched whole (unless --prefetch none).
OPEN_FETCH_MAX = 16 << 20


@dataclass(slots=True)
class PrefetchPlan:
    """What a mount fetches in the background once ready, and how far it got (``stats``)."""

    mode: str = "auto"
    profile: profiles.AccessProfile | None = None
    state: str = "idle"  # idle -> running -> done; "done" at once when all is local
    landmark_chunks: int = 0
    profile_chunks: int = 0
    already_stored: int = 0
    fetched: int = 0
    failed: int = 0
    opened_files: int = 0  # files fetched whole when opened

    def snapshot(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "state": self.state,
            "profile": self.profile is not None,
            "landmark_chunks": self.landmark_chunks,
            "profile_chunks": self.profile_chunks,
            "already_stored": self.already_stored,
            "fetched": self.fetched,
            "failed": self.failed,
            "opened_files": self.opened_files,
        }


def _save_profile(store: Store, view: ImageView, recorder: profiles.Recorder) -> None:
    indexes = [view.layer_index(n) for n in range(len(view.layers))]
    made = recorder.profile(str(view.record.manifest_digest), indexes)
    try:
        digest = profiles.save(store, made)
    except FusesnapError as exc:
        log.error("access profile not saved: %s", exc)
        return
    log.info("access profile %s: %d chunks", digest.short, len(made.chunks))


def _lazy_chunks(store: Store, view: ImageView) -> LazyChunks | None:
    """A fetching chunk source if some chunk of the image is not local, else None."""
    if all(layer_complete(store, layer.digest) for layer in view.layers):
        return None
    indexes = [view.layer_index(n) for n in range(len(view.layers))]
    return LazyChunks(store.chunks, indexes)


async def _main(
    ops: FuseOperations,
    cache: ChunkCache,
    state: MountState,
    directory: Path,
    on_ready: Callable[[str], None],
    lazy: LazyChunks | None,
    registry: RegistryOptions | None,
    plan: PrefetchPlan,
) -> None:
    if lazy is None:
        plan.state = "done"  # every chunk is local
        await _serve(ops, cache, state, directory, on_ready, None, plan)
        return
    async with open_registry_fetcher(
        Reference.parse(state.image), lazy.chunks, registry=registry
    ) as fetcher:
        lazy.fetcher = fetcher
        await _serve(ops, cache, state, directory, on_ready, lazy, plan)


_PROFILE_BATCH = 64


def _profile_batches(
    lazy: LazyChunks, plan: PrefetchPlan
) -> Iterator[tuple[LayerIndex, list[ChunkRef]]]:
    """The profile's chunks in recorded order, in batches of consecutive chunks of one
    layer (counted in ``plan.profile_chunks``)."""
    assert plan.profile is not None
    batch: list[ChunkRef] = []
    batch_index: LayerIndex | None = None
    for position, digest in plan.profile.chunks:
        located = lazy.locate(position, digest)
        if located is None:
            continue
        index, ref = located
        if batch and (index is not batch_index or len(batch) >= _PROFILE_BATCH):
            assert batch_index is not None
            yield batch_index, batch
            batch = []
        batch_index = index
        batch.append(ref)
        plan.profile_chunks += 1
    if batch:
        assert batch_index is not None
        yield batch_index, batch


async def _prefetch(lazy: LazyChunks, plan: PrefetchPlan) -> None:
    """In the background of a ready mount: landmark files, then the access profile's
    chunks in recorded order (batches of consecutive chunks of one layer), then, for
    ``all``, every chunk. Best effort: failures are counted and logged."""
    assert lazy.fetcher is not None
    fetcher = lazy.fetcher
    plan.state = "running"

    async def fetch(index: LayerIndex, items: Sequence[Entry | ChunkRef], what: str) -> None:
        try:
            result = await fetcher.prefetch(index, items)
        except FusesnapError as exc:
            plan.failed += len(items)
            log.warning("prefetch (%s) of layer %s: %s", what, index.layer_digest.short, exc)
            return
        plan.already_stored += result.already_stored
        plan.fetched += result.fetched
        plan.failed += result.failed
        if result.failed:
            log.warning("prefetch (%s) of layer %s: %s", what, index.layer_digest.short, result)

    for index, entries in lazy.landmarks():
        plan.landmark_chunks += len({r.digest for e in entries for r in e.chunks})
        await fetch(index, entries, "landmarks")
    if plan.profile is not None:
        # All at once, in recorded order: the fetcher's request slots bound the parallelism,
        # and a read of a chunk on its way waits for it rather than asking again.
        async with trio.open_nursery() as nursery:
            for index, batch in _profile_batches(lazy, plan):
                nursery.start_soon(fetch, index, batch, "profile")
    if plan.mode == "all":
        for index, refs in lazy.by_layer():
            await fetch(index, refs, "all")
    plan.state = "done"
    log.info("prefetch done: %s", plan.snapshot())


class _OpenedFiles:
    """A file a process opens is fetched whole in the background (up to `OPEN_FETCH_MAX`
    bytes), in as few requests as its chunks allow: a binary or library is then paged in
    by the kernel from local chunks instead of a round trip per fault. Once a file."""

    def __init__(self, lazy: LazyChunks, plan: PrefetchPlan, nursery: trio.Nursery) -> None:
        self._lazy, self._plan, self._nursery = lazy, plan, nursery
        self._seen: set[int] = set()

    def fetch(self, node: Node) -> None:
        entry = node.entry
        if node.ino in self._seen or not entry.chunks or entry.size > OPEN_FETCH_MAX:
            return
        self._seen.add(node.ino)
        self._nursery.start_soon(self._run, self._lazy.indexes[node.layer], entry)

    async def _run(self, index: LayerIndex, entry: Entry) -> None:
        assert self._lazy.fetcher is not None
        try:
            result = await self._lazy.fetcher.prefetch(index, [entry])
        except FusesnapError as exc:  # the reads will say it
            log.debug("fetching opened %s: %s", entry.path, exc)
            return
        self._plan.opened_files += 1
        self._plan.fetched += result.fetched
        self._plan.failed += result.failed


async def _serve(
    ops: FuseOperations,
    cache: ChunkCache,
    state: MountState,
    directory: Path,
    on_ready: Callable[[str], None],
    lazy: LazyChunks | None,
    plan: PrefetchPlan,
) -> None:
    fetcher = None if lazy is None else lazy.fetcher

    def stats() -> dict[str, Any]:
        return {
            **asdict(state),
            "uptime": round(time.time() - state.started, 3),
            **ops.stats.snapshot(),
            "cache": asdict(cache.stats),
            "inodes": ops.source.inode_count,
            "inodes_known": len(ops.lookups),
            **({"fetch": asdict(fetcher.stats)} if fetcher is not None else {}),
            "prefetch": plan.snapshot(),
            "recording": cache.on_access is not None,
        }

    async def fuse_loop() -> None:
        await serve()
        log.info("%s: the FUSE session ended", state.mountpoint)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        await nursery.start(_stop_on_signal, state.mountpoint)
        await nursery.start(serve_control, directory / CONTROL_SOCKET, {"stats": stats})
        await nursery.start(cache.run_prefetch)
        nursery.start_soon(fuse_loop)
        log.info("%s: serving %s (pid %d)", state.mountpoint, state.image, state.pid)
        on_ready("ready")
        if lazy is not None:
            if plan.mode != "none":
                ops.on_open = _OpenedFiles(lazy, plan, nursery).fetch
                nursery.start_soon(_prefetch, lazy, plan)
            else:
                plan.state = "done"


async def _stop_on_signal(
    mountpoint: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # pending ones arrive now
        task_status.started()
        async for signum in signals:
            log.info("%s: %s, unmounting", mountpoint, signal.Signals(signum).name)
            terminate()
            return
