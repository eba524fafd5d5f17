"""An image in the store seen as a filesystem: manifest, config, layer indexes, merged tree.

`ImageView` is what ``fusesnap ls/cat/layers/diff/tree`` (and the FUSE mount)
stand on; it reads only the store (pointers, indexes, chunks) and never the
network::

    with open_store(root) as store:
        view = ImageView.open(store, "127.0.0.1:5000/debian:12")
        node = view.resolve("/etc/os-release")
        data = b"".join(view.read(node))
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from fusesnap.digest import Digest
from fusesnap.errors import FusesnapError, NotFoundError
from fusesnap.fs import MergedTree, Node, iter_file
from fusesnap.index import EntryType, LayerIndex, decode
from fusesnap.oci import Descriptor, ImageConfig, Manifest, parse_manifest
from fusesnap.reference import Reference
from fusesnap.store import ChunkPresence, ImageRecord, LayerInfo, Store

# Like the kernel's limit on symlinks followed in one lookup (ELOOP past it).
MAX_SYMLINK_HOPS = 40


class PathError(FusesnapError, OSError):
    """A path inside an image cannot be used as asked (ELOOP, ENOTDIR, EISDIR); ``errno`` says
    which, the message names the path."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True, slots=True)
class LayerState:
    """One layer of an image and how much of it the store holds."""

    position: int
    descriptor: Descriptor
    info: LayerInfo | None  # None: not indexed yet
    presence: ChunkPresence | None


class ImageView:
    """A pulled image: its documents, layer indexes and merged tree (built on first use)."""

    def __init__(self, store: Store, record: ImageRecord) -> None:
        self.store = store
        self.record = record
        manifest = parse_manifest(
            store.content.read(record.manifest_digest),
            what=f"manifest {record.manifest_digest.short}",
        )
        if not isinstance(manifest, Manifest):
            raise NotFoundError(
                f"image {record.name}: {record.manifest_digest.short} is no manifest"
            )
        self.manifest = manifest
        self._indexes: dict[int, LayerIndex] = {}
        self._trees: dict[int | None, MergedTree] = {}

    def using(self, store: Store) -> ImageView:
        """The same image read through ``store`` (another handle on the same root: a
        forked daemon opens its own), sharing what was already read, decoded and built."""
        other = object.__new__(ImageView)
        other.store, other.record, other.manifest = store, self.record, self.manifest
        other._indexes, other._trees = self._indexes, self._trees
        if "config" in self.__dict__:
            other.__dict__["config"] = self.__dict__["config"]
        return other

    @classmethod
    def of_manifest(
        cls, store: Store, name: str, manifest_digest: str, *, depth: int = 0
    ) -> ImageView:
        """Manifest ``manifest_digest`` in the store seen as image ``name`` (the reference
        its blobs are fetched from), with no image record: what a snapshot chain of the
        containerd snapshotter is. ``depth``: only its bottom ``depth`` layers (0: all)."""
        digest = Digest(manifest_digest)
        view = cls(store, ImageRecord(name, digest, "", 0, digest, ""))
        if depth:
            if depth > len(view.manifest.layers):
                raise NotFoundError(
                    f"image {name}: {digest.short} has "
                    f"{len(view.manifest.layers)} layers, not {depth}"
                )
            view.manifest = dataclasses.replace(view.manifest, layers=view.layers[:depth])
        return view

    @classmethod
    def open(cls, store: Store, ref: str) -> ImageView:
        """The image stored under ``ref`` (normalized like a pull: ``busybox`` is
        ``docker.io/library/busybox:latest``)."""
        name = str(Reference.parse(ref))
        try:
            record = store.images.get(name)
        except NotFoundError:
            raise NotFoundError(f"image {name}: not found (pull it first)") from None
        return cls(store, record)

    @cached_property
    def config(self) -> ImageConfig:
        cfg = self.manifest.config
        return ImageConfig.parse(
            self.store.content.read(cfg.digest), what=f"config {cfg.digest.short}"
        )

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        return self.manifest.layers

    def layer_position(self, n: int) -> int:
        """``n`` as a layer number (negative counts from the top); error if out of range."""
        count = len(self.layers)
        if not -count <= n < count:
            raise NotFoundError(
                f"image {self.record.name}: no layer {n} (it has {count}: 0-{count - 1})"
            )
        return n % count

    def layer_index(self, n: int) -> LayerIndex:
        n = self.layer_position(n)
        if n not in self._indexes:
            desc = self.layers[n]
            try:
                data = self.store.layers.index(desc.digest)
            except NotFoundError:
                raise NotFoundError(
                    f"layer {n} ({desc.digest.short}) of {self.record.name} is not indexed "
                    f"(pull the image again)"
                ) from None
            self._indexes[n] = decode(data)
        return self._indexes[n]

    def layer_states(self) -> list[LayerState]:
        out = []
        for n, desc in enumerate(self.layers):
            if self.store.layers.exists(desc.digest):
                out.append(
                    LayerState(
                        n,
                        desc,
                        self.store.layers.info(desc.digest),
                        self.store.layers.present_chunks(desc.digest),
                    )
                )
            else:
                out.append(LayerState(n, desc, None, None))
        return out

    def tree(self, layer: int | None = None) -> MergedTree:
        """The merged tree of every layer, or (``layer`` = N) of layer N alone."""
        key = None if layer is None else self.layer_position(layer)
        if key not in self._trees:
            if key is None:
                indexes = [self.layer_index(n) for n in range(len(self.layers))]
            else:
                indexes = [self.layer_index(key)]
            self._trees[key] = MergedTree.build(indexes)
        return self._trees[key]

    def resolve(self, path: str, *, layer: int | None = None, follow: bool = True) -> Node:
        """The node at ``path``, following symlinks inside the image (never out of it);
        with ``follow=False`` a final symlink is returned itself."""
        return resolve(self.tree(layer), path, follow=follow)

    def read(self, node: Node) -> Iterator[bytes]:
        """A regular file's bytes, chunk by chunk, each verified against its digest."""
        if node.entry.type is not EntryType.FILE:
            raise PathError(errno.EISDIR if node.is_dir else errno.EINVAL, "not a regular file")
        return iter_file(node.entry, self.store.chunks)


def resolve(tree: MergedTree, path: str, *, follow: bool = True) -> Node:
    """Resolve ``path`` in ``tree`` like a lookup inside a chroot."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    stack = [tree.root]  # the directories walked so far, for ".."
    hops = 0
    while pending:
        name = pending.pop()
        if name == "..":
            if len(stack) > 1:
                stack.pop()
            continue
        parent = stack[-1]
        if not parent.is_dir:
            raise PathError(errno.ENOTDIR, f"path {path}: not a directory")
        try:
            node = tree.child(parent.ino, name)
        except (NotFoundError, KeyError):
            raise NotFoundError(f"path {path}: not found") from None
        if node.entry.type is EntryType.SYMLINK and (pending or follow):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise PathError(errno.ELOOP, f"path {path}: too many levels of symbolic links")
            target = [p for p in node.entry.linkname.split("/") if p not in ("", ".")]
            pending.extend(reversed(target))
            if node.entry.linkname.startswith("/"):
                stack = [tree.root]
            continue
        stack.append(node)
    return stack[-1]
