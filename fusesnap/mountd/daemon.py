"""The mount daemon: one image served at one directory until unmounted or signalled.

`serve_image(options)` is what ``fusesnap mount --foreground`` runs, and what
the background daemon runs (`fusesnap.mountd.start`): forked, it is handed the
image view the starter checked and built, so the image is checked once and the
tree built once; it opens the store itself (LMDB handles do not survive a fork).
In order:

1. clear a stale mount at DIR (its daemon died), refuse a live one;
2. open the store and the image; refuse an image that is not in it, or not whole
   (with ``wait_layers``, a snapshotter's chain mounted while its image is
   resolved: wait for its layers' indexes after mounting, `fusesnap.mountd.imagecheck`);
3. take a lease owned by this process on the image's manifest, config and
   layers, so ``gc`` spares them while it runs (a killed daemon's lease dies
   with it);
4. mount (``ro``, ``default_permissions``), build the merged tree (the kernel
   holds requests until it is served), and answer FUSE requests on one trio
   loop; beside it, under one guard (`fusesnap.mountd.guard`: a failure is
   logged, the mount serves on), the control socket, the cache's read-ahead,
   and on a lazy mount, once ready, the background fetches
   (`fusesnap.lazy.prefetch`; files as they are opened and what the dynamic
   loader will open next, `fusesnap.mountd.openfetch`);
5. on SIGTERM/SIGINT/SIGHUP, or when DIR is unmounted from outside: stop,
   unmount, drop the lease, remove the state file; with ``record``, store the
   access profile of what was read (replacing the image's previous one).

Under a holder (`fusesnap.mountd.holder`), step 4 hands the new connection to
the holder; a daemon the holder starts after a crash skips step 1, takes the
mounted connection over instead of mounting (`fusesnap.mountd.takeover`), and
replaces the dead daemon's state and lease.

Readiness: ``on_ready("mounted")`` once the kernel mount is in place (a new
mount's, not a takeover's), then ``on_ready("ready")`` once libfuse has answered
the kernel's INIT and requests are served, or ``on_ready("error: ...")`` if a
step before that failed (then the error is raised too).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from fusesnap.errors import FusesnapError, NotFoundError
from fusesnap.fuse import (
    ChunkCache,
    FuseOperations,
    Handover,
    ImageSource,
    fuse_session,
    mount_options,
    serve,
    terminate,
)
from fusesnap.image import ImageView
from fusesnap.lazy import LazyChunks, PrefetchPlan
from fusesnap.lazy import profile as profiles
from fusesnap.mountd.control import serve_control
from fusesnap.mountd.guard import SideTasks
from fusesnap.mountd.imagecheck import await_layers, open_view
from fusesnap.mountd.memory import limit_arenas, run_trim
from fusesnap.mountd.mountpoint import MountError, absolute_path, detach, is_stale, mount_info
from fusesnap.mountd.openfetch import OpenedFiles
from fusesnap.mountd.options import DaemonOptions, ReadyPipe, Supervision
from fusesnap.mountd.state import CONTROL_SOCKET, MountState, make_state_dir, process_start_time
from fusesnap.mountd.takeover import check_same_tree, hand_to
from fusesnap.pull import layer_complete, open_registry_fetcher
from fusesnap.reference import Reference
from fusesnap.store import CHUNK_FRAME_SIZE, Resource, Store, open_store

__all__ = ["prepare_mountpoint", "serve_image"]

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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
    """Tell the starter about an error before it propagates (it waits for a line), and
    the log: a starter that went on at ``mounted`` no longer reads, and a holder told
    of the error stops this daemon before `serve_logged` can say it."""
    try:
        yield
    except FusesnapError as exc:
        log.error("%s", exc)
        on_ready(f"error: {exc}")
        raise


@contextmanager
def _mounted(
    ops: FuseOperations,
    target: Path,
    *,
    allow_other: bool,
    on_ready: Callable[[str], None],
    supervision: Supervision | None = None,
    takeover: Handover | None = None,
) -> Iterator[None]:
    """`fuse_session`, with a failure to mount reported to the starter."""
    session = fuse_session(
        ops,
        target,
        mount_options(allow_other=allow_other),
        hold=None if supervision is None else hand_to(supervision.channel),
        takeover=takeover,
    )
    with _reported(on_ready):
        try:
            session.__enter__()
        except RuntimeError as exc:  # libfuse has printed why to stderr (the log)
            raise MountError(f"{target}: mount failed ({exc}; see the log)") from exc
    try:
        yield
    finally:
        session.__exit__(None, None, None)
        if takeover is not None and mount_info(target) is not None:
            # libfuse unmounts only what it mounted: stopped by a signal, a daemon that
            # took over leaves no mount whose connection dies with its holder.
            with suppress(MountError):
                detach(target, lazy=True)


def serve_image(
    options: DaemonOptions,
    *,
    on_ready: Callable[[str], None] = lambda message: None,
    view: ImageView | None = None,
    supervision: Supervision | None = None,
) -> None:
    """Serve the image of ``options`` until unmounted or signalled (module docstring).
    Blocks; runs its own trio loop.

    ``view``: the image as the starter checked it (from another handle on the same
    store); without one, the image is opened and checked here. ``supervision``: this
    daemon runs under a holder (`fusesnap.mountd.holder`), which is told readiness
    instead of ``on_ready``; with its ``takeover``, the mount is up already and this
    daemon takes its connection over.
    """
    limit_arenas()
    takeover = None
    if supervision is not None:
        on_ready = ReadyPipe(supervision.channel)
        if supervision.takeover is not None:
            takeover = Handover(*supervision.takeover, takeover=True)
    with _reported(on_ready):
        if takeover is None:
            target = prepare_mountpoint(options.mountpoint)
        else:  # mounted, and no one answers until this daemon does: do not touch it
            target = Path(absolute_path(options.mountpoint))
        directory = make_state_dir(options.root, target)
        store = open_store(options.root)
    with store:
        previous = MountState.load(directory)
        if takeover is None:
            drop_stale_state(store, directory)
        labels = {"fusesnap.mount": str(target), "fusesnap.image": options.ref}
        with store.leases.lease(owner_pid=os.getpid(), expires_in=None, labels=labels) as lease:
            # A snapshotter's chain may be mounted while its image is still being resolved.
            waiting = view is None and takeover is None and options.wait_layers > 0
            with _reported(on_ready):
                view = (
                    open_view(store, options, whole=not waiting)
                    if view is None
                    else view.using(store)
                )
                store.leases.add_resources(lease.id, _resources(view))
            # Mounted before the tree is built: a starter that only needs the mount point
            # in place (the snapshotter: containerd stacks an overlay on it) goes on, and
            # the kernel holds the first requests until this daemon answers.
            ops = FuseOperations()
            state = MountState(
                mountpoint=str(target),
                image=view.record.name,
                manifest_digest=str(view.record.manifest_digest),
                pid=os.getpid(),
                pid_start=process_start_time(os.getpid()),
                lease_id=lease.id,
                started=time.time(),
                holder_pid=None if supervision is None else supervision.holder_pid,
                holder_start=None
                if supervision is None
                else process_start_time(supervision.holder_pid),
            )
            saved = False  # a takeover that fails leaves the dead daemon's state as it was
            try:
                if takeover is None:
                    state.save(directory)
                    saved = True
                with (
                    _signals_blocked(),
                    _mounted(
                        ops,
                        target,
                        allow_other=options.allow_other,
                        on_ready=on_ready,
                        supervision=supervision,
                        takeover=takeover,
                    ),
                ):
                    if takeover is None:
                        on_ready("mounted")
                    with _reported(on_ready):
                        if waiting:
                            await_layers(
                                store, view, options.wait_layers, mountpoint=target, stop=_SIGNALS
                            )
                        mounted = _build(ops, store, view, options, state, directory, on_ready)
                        if takeover is not None:
                            check_same_tree(previous, ops)
                            ops.lookups.inherited = True
                    mounted.state.save(directory)
                    saved = True
                    if takeover is not None and previous is not None:
                        with suppress(NotFoundError):  # the dead daemon's
                            store.leases.delete(previous.lease_id)
                    trio.run(mounted.main, options)
                log.info("%s: unmounted", target)
                if mounted.recorder is not None:
                    _save_profile(store, view, mounted.recorder)
            finally:
                if saved:
                    MountState.remove(directory)


def _build(
    ops: FuseOperations,
    store: Store,
    view: ImageView,
    options: DaemonOptions,
    state: MountState,
    directory: Path,
    on_ready: Callable[[str], None],
) -> _Mounted:
    """Give ``ops`` the image's tree to serve; the daemon's trio side, with its state
    (``state`` and the tree's inode count), reads and prefetch plan."""
    lazy = _lazy_chunks(store, view)
    cache = ChunkCache(
        store.chunks,
        max_bytes=options.cache_bytes,
        load=None if lazy is None else lazy.read,
        piece_size=CHUNK_FRAME_SIZE,
    )
    ops.source = ImageSource(view.tree(), cache)
    recorder = profiles.Recorder() if options.record else None
    if recorder is not None:
        cache.on_access = recorder.note
    plan = PrefetchPlan(mode=options.prefetch, startup=options.startup_files)
    if lazy is not None and options.prefetch != "none":
        plan.profile = profiles.load(store, str(view.record.manifest_digest))
        if plan.profile is None and options.prefetch == "profile":
            log.warning("%s: no access profile recorded for this image", options.ref)
    state = dataclasses.replace(state, inodes=ops.source.inode_count)
    mounted = _Mounted(ops, cache, state, directory, on_ready, lazy, plan, store)
    mounted.recorder = recorder
    return mounted


# Seconds for libfuse to have the connection's INIT (it is queued when mounted).
INIT_TIMEOUT = 60.0


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
    """A fetching chunk source if some chunk of the image is not local, or may stop
    being local (a layer whose chunks the cache limit may evict), else None."""
    if all(
        layer_complete(store, layer.digest) and not store.cache.evictable_layer(layer.digest)
        for layer in view.layers
    ):
        return None
    indexes = [view.layer_index(n) for n in range(len(view.layers))]
    return LazyChunks(store.chunks, indexes)


class _Mounted:
    """The daemon's trio side: the FUSE loop, and the side tasks under one guard."""

    def __init__(
        self,
        ops: FuseOperations,
        cache: ChunkCache,
        state: MountState,
        directory: Path,
        on_ready: Callable[[str], None],
        lazy: LazyChunks | None,
        plan: PrefetchPlan,
        store: Store,
    ) -> None:
        self.ops, self.cache, self.state, self.directory = ops, cache, state, directory
        self.on_ready, self.lazy, self.plan, self.store = on_ready, lazy, plan, store
        self.tasks: SideTasks | None = None
        self.recorder: profiles.Recorder | None = None  # records an access profile

    async def main(self, options: DaemonOptions) -> None:
        if self.lazy is None:
            self.plan.state = "done"  # every chunk is local
            await self._serve()
            return
        async with open_registry_fetcher(
            Reference.parse(self.state.image), self.lazy.chunks, registry=options.registry
        ) as fetcher:
            self.lazy.fetcher = fetcher
            await self._serve()

    def stats(self) -> dict[str, Any]:
        state, ops, cache = self.state, self.ops, self.cache
        fetcher = None if self.lazy is None else self.lazy.fetcher
        return {
            **asdict(state),
            "uptime": round(time.time() - state.started, 3),
            **ops.stats.snapshot(),
            "cache": asdict(cache.stats),
            "inodes": ops.source.inode_count,
            "inodes_known": len(ops.lookups),
            **({"fetch": asdict(fetcher.stats)} if fetcher is not None else {}),
            "prefetch": self.plan.snapshot(),
            "recording": cache.on_access is not None,
            "side_task_failures": 0 if self.tasks is None else self.tasks.failures,
        }

    async def _serve(self) -> None:
        state, lazy, plan = self.state, self.lazy, self.plan

        async def fuse_loop() -> None:
            await serve()
            log.info("%s: the FUSE session ended", state.mountpoint)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            await nursery.start(_stop_on_signal, state.mountpoint)
            tasks = self.tasks = SideTasks(nursery)
            nursery.start_soon(fuse_loop)
            # Ready once the kernel's INIT is answered: a daemon killed before that
            # would leave a connection that a new one cannot initialise.
            with trio.move_on_after(INIT_TIMEOUT) as waited:
                await self.ops.initialized.wait()
            if waited.cancelled_caught:
                raise MountError(f"{state.mountpoint}: no FUSE INIT within {INIT_TIMEOUT:.0f}s")
            socket = self.directory / CONTROL_SOCKET
            await tasks.start("the control socket", serve_control, socket, {"stats": self.stats})
            await tasks.start("read-ahead", self.cache.run_prefetch)
            stats = self.cache.stats
            await tasks.start(
                "memory trim", run_trim, self.store, lambda: stats.misses + stats.loaded
            )
            log.info("%s: serving %s (pid %d)", state.mountpoint, state.image, state.pid)
            self.on_ready("ready")
            if lazy is not None:
                if plan.mode != "none":
                    assert isinstance(self.ops.source, ImageSource)
                    opened = OpenedFiles(lazy, plan, tasks, self.ops.source.tree)
                    self.ops.on_open = opened.fetch
                    tasks.start_soon("prefetch", opened.prefetch)
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
