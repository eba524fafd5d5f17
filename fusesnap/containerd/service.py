"""containerd's ``containerd.services.snapshots.v1.Snapshots`` gRPC service over `Snapshots`.

Every call reads its namespace from the gRPC metadata ``containerd-namespace``
(as containerd's proxy plugin sends it) and maps fusesnap's errors to the codes
containerd's ``errdefs`` turns back into its own: not found, already exists,
failed precondition (a snapshot with children, a commit of what is not
active), invalid argument (a bad label, key, namespace, reference or update
mask). A failure to mount is UNAVAILABLE; a bug is INTERNAL, logged with its
traceback, and the server serves on. Each answer is counted (`Metrics`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2

from fusesnap.containerd.api import mount_pb2, snapshots_pb2, snapshots_pb2_grpc
from fusesnap.containerd.filters import FilterError, matches, parse_filters
from fusesnap.containerd.labels import InvalidLabelError
from fusesnap.containerd.metrics import Metrics
from fusesnap.containerd.snapshots import InvalidRequestError, Mount, Snapshots
from fusesnap.errors import (
    AlreadyExistsError,
    FusesnapError,
    InvalidReferenceError,
    MountError,
    NotFoundError,
    StoreError,
)
from fusesnap.store import (
    ACTIVE,
    COMMITTED,
    VIEW,
    SnapshotInUseError,
    SnapshotRecord,
    SnapshotStateError,
)

__all__ = ["NAMESPACE_KEY", "SnapshotsService"]

log = logging.getLogger(__name__)

NAMESPACE_KEY = "containerd-namespace"
# The keys containerd's metadata layer gives a backend: NAMESPACE/ID/KEY.
_CONTAINERD_KEY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)/[0-9]+/")

_KINDS = {
    VIEW: snapshots_pb2.VIEW,
    ACTIVE: snapshots_pb2.ACTIVE,
    COMMITTED: snapshots_pb2.COMMITTED,
}

# Checked in order: the first class an error is an instance of gives its code.
_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (SnapshotInUseError, grpc.StatusCode.FAILED_PRECONDITION),
    (SnapshotStateError, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidLabelError, grpc.StatusCode.INVALID_ARGUMENT),
    (FilterError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidReferenceError, grpc.StatusCode.INVALID_ARGUMENT),
    (StoreError, grpc.StatusCode.INVALID_ARGUMENT),  # a key the store cannot hold
    (MountError, grpc.StatusCode.UNAVAILABLE),
    (FusesnapError, grpc.StatusCode.UNKNOWN),
)

T = TypeVar("T")


def _info(record: SnapshotRecord) -> snapshots_pb2.Info:
    info = snapshots_pb2.Info(
        name=record.key,
        parent=record.parent or "",
        kind=_KINDS[record.kind],
        labels=record.labels,
    )
    info.created_at.FromNanoseconds(int(record.created * 1e9))
    info.updated_at.FromNanoseconds(int((record.updated or record.created) * 1e9))
    return info


def _mounts(mounts: Sequence[Mount]) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


class SnapshotsService(snapshots_pb2_grpc.SnapshotsServicer):
    """The gRPC face of ``snapshots`` (module docstring)."""

    def __init__(self, snapshots: Snapshots, metrics: Metrics) -> None:
        self.snapshots = snapshots
        self.metrics = metrics

    def _call(
        self, method: str, context: grpc.ServicerContext, key: str, body: Callable[[str], T]
    ) -> T:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            return body(self._namespace(context, key))
        except grpc.RpcError:
            raise
        except Exception as exc:
            code = next((c for cls, c in _CODES if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s: internal error", method)
                message = f"internal error: {type(exc).__name__}: {exc}"
            else:
                log.debug("%s: %s: %s", method, code.name, exc)
                message = str(exc)
            context.abort(code, message)
            raise  # not reached: abort raises
        finally:
            self.metrics.request(method, code.name, time.monotonic() - started)

    @staticmethod
    def _namespace(context: grpc.ServicerContext, key: str) -> str:
        """The call's namespace: the gRPC metadata ``containerd-namespace``, else the
        namespace containerd's own keys start with (``NS/ID/NAME``: containerd 1.6 sends
        proxy snapshotters no namespace metadata), else "" (every namespace, for
        containerd's gc: `Snapshots` says what that may do)."""
        for name, value in context.invocation_metadata():
            if name == NAMESPACE_KEY:
                return str(value)
        match = _CONTAINERD_KEY.match(key)
        return match.group(1) if match else ""

    def Prepare(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            mounts = self.snapshots.prepare(ns, request.key, request.parent, request.labels)
            return snapshots_pb2.PrepareSnapshotResponse(mounts=_mounts(mounts))

        return self._call("Prepare", context, request.key, body)

    def View(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            mounts = self.snapshots.view(ns, request.key, request.parent, request.labels)
            return snapshots_pb2.ViewSnapshotResponse(mounts=_mounts(mounts))

        return self._call("View", context, request.key, body)

    def Mounts(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            mounts = self.snapshots.mounts(ns, request.key)
            return snapshots_pb2.MountsResponse(mounts=_mounts(mounts))

        return self._call("Mounts", context, request.key, body)

    def Commit(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            self.snapshots.commit(ns, request.name, request.key, request.labels)
            return empty_pb2.Empty()

        return self._call("Commit", context, request.key, body)

    def Remove(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            self.snapshots.remove(ns, request.key)
            return empty_pb2.Empty()

        return self._call("Remove", context, request.key, body)

    def Stat(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            record = self.snapshots.stat(ns, request.key)
            return snapshots_pb2.StatSnapshotResponse(info=_info(record))

        return self._call("Stat", context, request.key, body)

    def Update(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            paths = list(request.update_mask.paths) if request.HasField("update_mask") else []
            labels = dict(request.info.labels)
            record = self.snapshots.update(ns, request.info.name, labels, paths)
            return snapshots_pb2.UpdateSnapshotResponse(info=_info(record))

        return self._call("Update", context, request.info.name, body)

    def List(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        def body(ns: str) -> list[Any]:
            wanted = parse_filters(request.filters)
            infos = [_info(r) for r in self.snapshots.list(ns) if matches(wanted, r)]
            # containerd sends at most 100 infos a message; so do we.
            return [
                snapshots_pb2.ListSnapshotsResponse(info=infos[i : i + 100])
                for i in range(0, len(infos), 100)
            ]

        yield from self._call("List", context, "", body)

    def Usage(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            usage = self.snapshots.usage(ns, request.key)
            return snapshots_pb2.UsageResponse(size=usage.size, inodes=usage.inodes)

        return self._call("Usage", context, request.key, body)

    def Cleanup(self, request: Any, context: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            self.snapshots.cleanup()
            return empty_pb2.Empty()

        return self._call("Cleanup", context, "", body)
