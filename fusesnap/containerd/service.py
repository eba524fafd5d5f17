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
from typing import Any

import grpc

from fusesnap.containerd import api
from fusesnap.containerd.filters import FilterError, matches, parse_filters
from fusesnap.containerd.labels import InvalidLabelError
from fusesnap.containerd.metrics import Metrics
from fusesnap.containerd.snapshots import InvalidRequestError, Snapshots
from fusesnap.containerd.snapshots import Mount as SnapshotMount
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

_KINDS = {VIEW: api.KIND_VIEW, ACTIVE: api.KIND_ACTIVE, COMMITTED: api.KIND_COMMITTED}

Info = api.message("Info")
Mount = api.message("containerd.types.Mount")
Empty = api.message("google.protobuf.Empty")
PrepareResponse = api.message("PrepareSnapshotResponse")
ViewResponse = api.message("ViewSnapshotResponse")
MountsResponse = api.message("MountsResponse")
StatResponse = api.message("StatSnapshotResponse")
UpdateResponse = api.message("UpdateSnapshotResponse")
ListResponse = api.message("ListSnapshotsResponse")
UsageResponse = api.message("UsageResponse")

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


def _info(record: SnapshotRecord) -> Any:
    info = Info(
        name=record.key,
        parent=record.parent or "",
        kind=_KINDS[record.kind],
        labels=record.labels,
    )
    info.created_at.FromNanoseconds(int(record.created * 1e9))
    info.updated_at.FromNanoseconds(int((record.updated or record.created) * 1e9))
    return info


def _mounts(mounts: Sequence[SnapshotMount]) -> list[Any]:
    return [Mount(type=m.type, source=m.source, options=m.options) for m in mounts]


class SnapshotsService:
    """The gRPC face of ``snapshots`` (module docstring), an `api.Servicer`."""

    def __init__(self, snapshots: Snapshots, metrics: Metrics) -> None:
        self.snapshots = snapshots
        self.metrics = metrics

    def _call(
        self, method: str, context: grpc.ServicerContext, key: str, body: Callable[[str], Any]
    ) -> Any:
        """``body(namespace)``'s answer (None: ``Empty``), or the call aborted with the
        code of the error it raised (module docstring)."""
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            answer = body(self._namespace(context, key))
            return Empty() if answer is None else answer
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
            took = time.monotonic() - started
            self.metrics.request(method, code.name, took)
            log.debug("%s %s: %s in %.1f ms", method, key, code.name, took * 1000)

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

    # One method per RPC (`api.Servicer`): the namespace's key, the call, the answer.

    def Prepare(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            return PrepareResponse(
                mounts=_mounts(self.snapshots.prepare(ns, req.key, req.parent, req.labels))
            )

        return self._call("Prepare", ctx, req.key, body)

    def View(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            return ViewResponse(
                mounts=_mounts(self.snapshots.view(ns, req.key, req.parent, req.labels))
            )

        return self._call("View", ctx, req.key, body)

    def Mounts(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            return MountsResponse(mounts=_mounts(self.snapshots.mounts(ns, req.key)))

        return self._call("Mounts", ctx, req.key, body)

    def Commit(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        commit = self.snapshots.commit
        return self._call(
            "Commit", ctx, req.key, lambda ns: commit(ns, req.name, req.key, req.labels)
        )

    def Remove(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        return self._call("Remove", ctx, req.key, lambda ns: self.snapshots.remove(ns, req.key))

    def Stat(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            return StatResponse(info=_info(self.snapshots.stat(ns, req.key)))

        return self._call("Stat", ctx, req.key, body)

    def Update(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            paths = list(req.update_mask.paths) if req.HasField("update_mask") else []
            record = self.snapshots.update(ns, req.info.name, dict(req.info.labels), paths)
            return UpdateResponse(info=_info(record))

        return self._call("Update", ctx, req.info.name, body)

    def List(self, req: Any, ctx: grpc.ServicerContext) -> Iterator[Any]:
        def body(ns: str) -> list[Any]:
            wanted = parse_filters(req.filters)
            infos = [_info(r) for r in self.snapshots.list(ns) if matches(wanted, r)]
            # containerd sends at most 100 infos a message; so do we.
            return [ListResponse(info=infos[i : i + 100]) for i in range(0, len(infos), 100)]

        yield from self._call("List", ctx, "", body)

    def Usage(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        def body(ns: str) -> Any:
            usage = self.snapshots.usage(ns, req.key)
            return UsageResponse(size=usage.size, inodes=usage.inodes)

        return self._call("Usage", ctx, req.key, body)

    def Cleanup(self, req: Any, ctx: grpc.ServicerContext) -> Any:
        def body(ns: str) -> None:
            self.snapshots.cleanup()

        return self._call("Cleanup", ctx, "", body)
