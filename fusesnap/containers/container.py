"""Containers: an image's lazy mount as the lower dir of an overlay, run by runc.

Each container has a state directory, which is also its OCI bundle::

    ROOT/containers/NAME/
        container.json  `ContainerRecord`: name, image, status, exit code, runner, options
        config.json     the OCI runtime config (`fusesnap.containers.spec`)
        lower/          the image, mounted read-only by a fusesnap daemon (allow_other)
        rootfs/         the overlay of the container's snapshot on lower: its root
        runc.log        runc's own log (JSON lines)
        container.log   a detached container's stdout and stderr

The container's writes go to the upper dir of its active snapshot
``containers/NAME`` (a view, without upper dir, with ``readonly``), see
`fusesnap.snapshots.snapshotter`; the store also records the container
(`ContainerRef`), which keeps its image from gc.

`create` sets all of it up, `run` runs the container in the foreground and takes
the mounts down when it exits (the upper dir stays until `remove`), `remove` stops
it and takes everything down. The *runner* is the process that runs runc (``fusesnap
run``, or `fusesnap.containers.runner` for a detached container); its pid is recorded.
`reap` takes the mounts and runc state of containers whose runner died without
saying how the container ended (SIGKILL), unless runc still runs them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from fusesnap.containers import runc
from fusesnap.containers.record import (
    RECORD,
    SPEC,
    UNFINISHED,
    ContainerError,
    ContainerInfo,
    ContainerRecord,
    container_dir,
    directories,
    load_record,
    snapshot_key,
)
from fusesnap.containers.runc import RunResult, runc_status
from fusesnap.containers.spec import ProcessOptions, build_spec, resolve_user
from fusesnap.errors import AlreadyExistsError, FusesnapError, NotFoundError
from fusesnap.image import ImageView
from fusesnap.lazy import profile as profiles
from fusesnap.mountd import (
    DaemonOptions,
    MountError,
    check_image,
    mount_failure,
    mount_info,
    start_mount,
    unmount,
)
from fusesnap.pull import layer_complete
from fusesnap.registry import RegistryOptions
from fusesnap.snapshots import Snapshotter
from fusesnap.store import ContainerRef, Store, open_store

__all__ = [
    "ContainerError",
    "ContainerInfo",
    "ContainerRecord",
    "RunResult",
    "container_dir",
    "create",
    "info",
    "list_containers",
    "reap",
    "remove",
    "run",
    "runc_status",
    "snapshot_key",
]

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
RUNNER_EXIT_TIMEOUT = 60.0


def _wants_profile(store: Store, view: ImageView) -> bool:
    """Record an access profile of this start (the first of a lazily pulled image)?"""
    if profiles.load(store, str(view.record.manifest_digest)) is not None:
        return False
    return not all(layer_complete(store, layer.digest) for layer in view.layers)


def _read_image_file(lower: Path, path: str) -> str:
    """A small text file of the image (``etc/passwd``); "" if missing or a symlink (which
    would point into the host if followed here)."""
    target = lower / path
    try:
        if target.is_symlink():
            return ""
        return target.read_text(errors="replace")
    except OSError:
        return ""


def create(
    root: Path,
    name: str,
    ref: str,
    options: ProcessOptions,
    *,
    detached: bool = False,
    auto_remove: bool = False,
    registry: RegistryOptions | None = None,
    verbose: bool = False,
    view: ImageView | None = None,
) -> Path:
    """Set up container ``name`` of image ``ref`` (in the store, every layer indexed):
    snapshot, mount, overlay, ``config.json``. Its directory; on failure nothing is left
    behind. `AlreadyExistsError` if the name is in use. ``view``: the image, if the
    caller has checked it already (`check_image`; from any handle on the store)."""
    directory = container_dir(root, name)
    directory.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o711)
    except FileExistsError:
        raise AlreadyExistsError(
            f"container {name}: the name is in use (fusesnap rm {name})"
        ) from None
    record = ContainerRecord(
        name=name,
        image=ref,
        created=time.time(),
        detached=detached,
        auto_remove=auto_remove,
        readonly=options.readonly,
        snapshot=snapshot_key(name),
    )
    record.claim()
    record.save(directory)
    try:
        lower, rootfs = directory / "lower", directory / "rootfs"
        for d in (lower, rootfs):
            d.mkdir()
        with open_store(root) as store:
            view = check_image(store, ref) if view is None else view.using(store)
            view.tree()  # built once, here: the mount daemon is forked with it
            image_config = dict(view.config.config)
            snapshots = Snapshotter(store, root)
            top = snapshots.ensure_image(view)
            make = snapshots.view if options.readonly else snapshots.prepare
            make(record.snapshot, top, labels={"fusesnap.container": name})
            store.containers.put(
                ContainerRef(
                    name=name,
                    image=view.record.name,
                    manifest_digest=view.record.manifest_digest,
                    snapshot=record.snapshot,
                    created=record.created,
                )
            )
            overlay = snapshots.overlay_options(record.snapshot, lower)
            record_profile = _wants_profile(store, view)
        daemon = DaemonOptions(
            root,
            ref,
            lower,
            allow_other=True,
            startup_files=True,
            record=record_profile,
            registry=registry or RegistryOptions(),
            verbose=verbose,
        )
        start_mount(daemon, view=view)
        # FUSE's root inode has mode 0 until its first getattr, and an overlay without
        # an upper dir (a view) takes its root's mode from the lower at mount time.
        lower.stat()
        _mount_overlay(overlay, rootfs)
        who = resolve_user(
            options.user if options.user is not None else str(image_config.get("User") or ""),
            _read_image_file(lower, "etc/passwd"),
            _read_image_file(lower, "etc/group"),
        )
        spec = build_spec(image_config, options, rootfs=str(rootfs), user=who, hostname=name)
        (directory / SPEC).write_text(json.dumps(spec, indent=1))
        record.status = "created"
        record.save(directory)
    except BaseException:
        with suppress(Exception):
            remove(root, name, force=True)
        raise
    return directory


def _mount_overlay(options: str, rootfs: Path) -> None:
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(rootfs)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        message = proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise MountError(f"{rootfs}: overlay mount failed: {message[0]}")


def _umount(path: Path) -> None:
    """Unmount whatever is mounted at ``path`` (lazily if busy); nothing if nothing is."""
    while mount_info(path) is not None:
        proc = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            lazy = subprocess.run(
                ["umount", "-l", str(path)], capture_output=True, text=True, check=False
            )
            if lazy.returncode != 0:
                raise MountError(f"{path}: cannot unmount: {proc.stderr.strip()}")


def _take_down(root: Path, directory: Path) -> None:
    """The overlay, then the lower mount (its daemon exits); the upper dir stays."""
    rootfs, lower = directory / "rootfs", directory / "lower"
    _umount(rootfs)
    try:
        unmount(root, lower, lazy=True)
    except MountError as exc:
        if mount_info(lower) is not None:
            raise ContainerError(f"container {directory.name}: {exc}") from None
    for path in (rootfs, lower):
        if mount_info(path) is not None:  # never let rmtree walk into a mount
            raise ContainerError(f"container {directory.name}: {path} is still mounted")


def run(root: Path, name: str, *, terminal: bool = False) -> RunResult:
    """Run container ``name`` (made by `create`) in the foreground (`runc.run_foreground`),
    as its runner; record how it ended and take its mounts down."""
    directory, record = load_record(root, name)
    record.status = "running"
    record.claim()
    record.save(directory)
    result = runc.run_foreground(root, directory, name, terminal=terminal)
    now = ContainerRecord.load(directory)  # `remove` may be taking it down meanwhile
    if now is not None:
        now.status = "exited"
        now.exit_code = result.exit_code
        now.error = result.error
        with suppress(OSError):
            now.save(directory)
        try:
            _take_down(root, directory)
        except FusesnapError as exc:
            log.warning("%s", exc)
    return result


def stop(root: Path, name: str, *, force: bool = False, timeout: float = STOP_TIMEOUT) -> None:
    """Stop container ``name`` if runc runs it: SIGTERM, then SIGKILL after ``timeout``
    seconds (at once with ``force``); then wait for its runner to finish."""
    _, record = load_record(root, name)
    if runc_status(root, name) in runc.LIVE:
        if not force:
            runc.kill(root, name, "TERM")
        if force or not runc.wait_not_live(root, name, timeout):
            runc.kill(root, name, "KILL")
            if not runc.wait_not_live(root, name, STOP_TIMEOUT):
                raise ContainerError(f"container {name}: does not die")
    if record.runner_pid != os.getpid():
        deadline = time.monotonic() + RUNNER_EXIT_TIMEOUT
        while record.runner_alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def remove(root: Path, name: str, *, force: bool = False, timeout: float = STOP_TIMEOUT) -> None:
    """Take container ``name`` down: stop it (`stop`), runc's state, the overlay, the
    lower mount, its snapshot and record, the state directory."""
    directory = container_dir(root, name)
    if not directory.is_dir():
        raise NotFoundError(f"container {name}: not found")
    if (directory / RECORD).exists():
        stop(root, name, force=force, timeout=timeout)
        if not directory.is_dir():
            return  # its runner removed it (``run --rm``)
    if runc_status(root, name) is not None:
        runc.delete(root, name)
    _take_down(root, directory)
    with open_store(root) as store:
        store.containers.delete(name)
        with suppress(NotFoundError):
            Snapshotter(store, root).remove(snapshot_key(name))
    shutil.rmtree(directory)


def reap(root: Path) -> list[str]:
    """Take down the mounts and runc state of every container whose runner died before
    it recorded the end (a SIGKILLed ``fusesnap run``) and that runc no longer runs;
    they stay listed as ``dead`` until removed. The names reaped."""
    reaped = []
    for directory in directories(root):
        record = ContainerRecord.load(directory)
        if record is None or record.status not in UNFINISHED or record.runner_alive():
            continue
        status = runc_status(root, record.name)
        if status in ("running", "paused"):
            continue  # still running: `rm` stops it
        try:
            if status is not None:
                runc.delete(root, record.name)
            _take_down(root, directory)
        except FusesnapError as exc:
            log.warning("container %s: cannot clean up: %s", record.name, exc)
            continue
        record.status = "dead"
        record.save(directory)
        reaped.append(record.name)
    return reaped


def info(root: Path, name: str) -> dict[str, Any]:
    """Container ``name`` as ``containers info`` shows it: its record, its OCI runtime
    spec, its snapshot."""
    directory, record = load_record(root, name)
    try:
        spec = json.loads((directory / SPEC).read_text())
    except (OSError, ValueError):
        spec = None
    with open_store(root) as store:
        snapshots = Snapshotter(store, root)
        try:
            snap = snapshots.stat(record.snapshot)
        except NotFoundError:
            snapshot = None
        else:
            path = snapshots.path(snap)
            snapshot = {
                "key": snap.key,
                "kind": snap.kind,
                "parent": snap.parent,
                "path": None if path is None else str(path),
                "upper": str(path / "fs") if path is not None and snap.kind == "active" else None,
            }
    return {
        "record": {**dataclasses.asdict(record), "runc_status": runc_status(root, name)},
        "spec": spec,
        "snapshot": snapshot,
    }


def list_containers(root: Path) -> Iterator[ContainerInfo]:
    """The containers under ``ROOT/containers``, by name, with runc's status (or how they
    ended)."""
    for directory in directories(root):
        record = ContainerRecord.load(directory)
        if record is None:
            yield ContainerInfo(directory.name, "?", "unknown", directory.stat().st_mtime)
            continue
        status = runc_status(root, record.name)
        if status is None:
            if record.status == "exited":
                status = f"exited ({record.exit_code})"
            elif record.status in UNFINISHED and not record.runner_alive():
                status = "dead"  # its runner was killed: `reap` cleans up
            else:
                status = record.status
        elif mount_failure(root, directory / "lower") is not None:
            status += " (image mount failed: reads get EIO)"
        yield ContainerInfo(record.name, record.image, status, record.created)
