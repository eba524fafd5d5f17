"""What a mount daemon serves: the image checked whole, or its layers waited for.

`check_image` and `open_view` refuse an image that is not in the store or has a layer
without an index. A containerd snapshotter's lower mount may start before that, while
its image is still being resolved (`DaemonOptions.wait_layers`): its daemon mounts,
then `await_layers` waits for each layer's index and decodes it as it comes, so that
the fork, the mount and part of the decoding run beside the resolve.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Collection
from pathlib import Path

from fusesnap.errors import NotFoundError
from fusesnap.image import ImageView
from fusesnap.mountd.mountpoint import MountError, mount_info
from fusesnap.mountd.options import DaemonOptions
from fusesnap.store import Store

__all__ = ["await_layers", "check_image", "open_view"]

# How often a waiting daemon looks for the layers' indexes (an LMDB read per layer).
_POLL = 0.003
_MOUNT_CHECK = 20  # polls between two looks at the mount table


def check_image(store: Store, ref: str) -> ImageView:
    """The stored image ``ref``, every layer of it indexed (``pull`` or ``pull --lazy``).

    `NotFoundError` (one line, saying to pull) if it is not in the store or a
    layer has no index. Chunks need not be local: a lazy mount fetches them.
    """
    return _check_layers(store, ImageView.open(store, ref), ref)


def open_view(store: Store, options: DaemonOptions, *, whole: bool = True) -> ImageView:
    """What ``options`` serve: the image record named ``options.ref`` (`check_image`),
    or, with ``options.manifest``, that manifest's layers, every one indexed (unless
    not ``whole``: then the caller waits for them, `await_layers`)."""
    if not options.manifest:
        return check_image(store, options.ref)
    view = ImageView.of_manifest(store, options.ref, options.manifest, depth=options.depth)
    return _check_layers(store, view, options.ref) if whole else view


def await_layers(
    store: Store,
    view: ImageView,
    timeout: float,
    *,
    mountpoint: Path,
    stop: Collection[signal.Signals],
) -> None:
    """(blocking) Wait until every layer of ``view`` is indexed, decoding each as its
    index appears; `NotFoundError` if one is not within ``timeout`` seconds, `MountError`
    once one of the (blocked) signals ``stop`` is pending or ``mountpoint`` is no longer
    mounted (the mount was abandoned)."""
    deadline = time.monotonic() + timeout
    pending = list(range(len(view.layers)))
    for polls in itertools.count():
        waiting = []
        for n in pending:
            if store.layers.exists(view.layers[n].digest):
                view.layer_index(n)  # decoded now, while the rest is still on its way
            else:
                waiting.append(n)
        pending = waiting
        if not pending:
            return
        if signal.sigpending() & set(stop):
            raise MountError("stopped while waiting for the image's layer indexes")
        if polls % _MOUNT_CHECK == 0 and mount_info(mountpoint) is None:
            raise MountError(f"{mountpoint}: unmounted while waiting for the layer indexes")
        if time.monotonic() >= deadline:
            n = pending[0]
            raise NotFoundError(
                f"image {view.record.name}: layer {n} ({view.layers[n].digest.short}) was not "
                f"indexed within {timeout:.0f}s"
            )
        time.sleep(_POLL)


def _check_layers(store: Store, view: ImageView, ref: str) -> ImageView:
    for n, layer in enumerate(view.layers):
        if not store.layers.exists(layer.digest):
            raise NotFoundError(
                f"image {view.record.name}: layer {n} ({layer.digest.short}) is not in the "
                f"store (run: fusesnap pull {ref})"
            )
    return view
