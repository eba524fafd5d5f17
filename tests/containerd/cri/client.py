"""What a kubelet calls on a container runtime, and nothing else: no kubelet, no crictl.

``api.proto`` beside this module is the subset of the CRI's ``runtime.v1`` the
tests use. It is compiled here, once per process, with grpcio-tools into a
``FileDescriptorSet`` (no generated Python code), and the message classes are
built from that in a descriptor pool of its own, as `fusesnap.containerd.api`
does for containerd's snapshots API::

    with CriClient(ctrd.address) as cri:
        image_id = cri.pull_image(ref)
        pod = cri.run_pod_sandbox(message("PodSandboxConfig")(metadata={"name": "p"}))

Errors are gRPC's own (`grpc.RpcError`, with containerd's message as details).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["CriClient", "enum_value", "message"]

PROTO = Path(__file__).with_name("api.proto")
PACKAGE = "runtime.v1"
CALL_TIMEOUT = 120.0  # a pull or a sandbox's first start may take a while


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    with tempfile.TemporaryDirectory(prefix="cri-proto-") as tmp:
        out = Path(tmp, "api.binpb")
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
            "--include_imports", f"--descriptor_set_out={out}", PROTO.name,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"protoc {PROTO} exited {done.returncode}:\n{done.stderr}")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    return pool


def message(name: str) -> Any:
    """The message class ``runtime.v1.NAME``; nested messages may be given as dicts."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"{PACKAGE}.{name}"))


def enum_value(enum: str, name: str) -> int:
    """The number of ``runtime.v1.ENUM``'s value ``name`` (``ContainerState``, ...)."""
    return int(_pool().FindEnumTypeByName(f"{PACKAGE}.{enum}").values_by_name[name].number)


class _Service:
    """``service.Method(request)`` for each unary method of ``runtime.v1.NAME``."""

    def __init__(self, channel: grpc.Channel, name: str, timeout: float) -> None:
        service = _pool().FindServiceByName(f"{PACKAGE}.{name}")
        for method in service.methods:
            call = channel.unary_unary(
                f"/{PACKAGE}.{name}/{method.name}",
                request_serializer=message_factory.GetMessageClass(
                    method.input_type
                ).SerializeToString,
                response_deserializer=message_factory.GetMessageClass(
                    method.output_type
                ).FromString,
            )
            setattr(self, method.name, functools.partial(call, timeout=timeout))

    def __getattr__(self, name: str) -> Any:  # for type checkers: the methods set above
        raise AttributeError(name)


class CriClient:
    """The CRI's two services on containerd's gRPC socket ``address`` (a unix path).

    Each call waits ``timeout`` seconds at most. Use it as a context manager, or
    `close` it.
    """

    def __init__(self, address: str, *, timeout: float = CALL_TIMEOUT) -> None:
        self._channel = grpc.insecure_channel(f"unix://{address}")
        self.runtime = _Service(self._channel, "RuntimeService", timeout)
        self.images = _Service(self._channel, "ImageService", timeout)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- images ----------------------------------------------------------------------------

    def version(self) -> Any:
        return self.runtime.Version(message("VersionRequest")(version="v1"))

    def pull_image(self, ref: str) -> str:
        """Pull ``ref`` as a kubelet does; the image's ID (``sha256:`` of its config)."""
        reply = self.images.PullImage(message("PullImageRequest")(image={"image": ref}))
        return str(reply.image_ref)

    def list_images(self) -> list[Any]:
        return list(self.images.ListImages(message("ListImagesRequest")()).images)

    def remove_image(self, ref: str) -> None:
        """Remove the image ``ref`` (a name or an ID) names, under every name it has."""
        self.images.RemoveImage(message("RemoveImageRequest")(image={"image": ref}))

    # -- pods ------------------------------------------------------------------------------

    def run_pod_sandbox(self, config: Any) -> str:
        """Start a pod (its sandbox container) of ``PodSandboxConfig`` ``config``; its ID."""
        reply = self.runtime.RunPodSandbox(message("RunPodSandboxRequest")(config=config))
        return str(reply.pod_sandbox_id)

    def stop_pod_sandbox(self, pod_id: str) -> None:
        self.runtime.StopPodSandbox(message("StopPodSandboxRequest")(pod_sandbox_id=pod_id))

    def remove_pod_sandbox(self, pod_id: str) -> None:
        self.runtime.RemovePodSandbox(message("RemovePodSandboxRequest")(pod_sandbox_id=pod_id))

    # -- containers ------------------------------------------------------------------------

    def create_container(self, pod_id: str, config: Any, pod_config: Any) -> str:
        """Create a container of ``ContainerConfig`` ``config`` in pod ``pod_id`` (made
        with ``pod_config``); its ID."""
        request = message("CreateContainerRequest")(
            pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config
        )
        return str(self.runtime.CreateContainer(request).container_id)

    def start_container(self, container_id: str) -> None:
        self.runtime.StartContainer(message("StartContainerRequest")(container_id=container_id))

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        request = message("StopContainerRequest")(container_id=container_id, timeout=timeout)
        self.runtime.StopContainer(request)

    def remove_container(self, container_id: str) -> None:
        request = message("RemoveContainerRequest")(container_id=container_id)
        self.runtime.RemoveContainer(request)

    def container_status(self, container_id: str) -> Any:
        """The ``ContainerStatus`` of ``container_id``."""
        request = message("ContainerStatusRequest")(container_id=container_id)
        return self.runtime.ContainerStatus(request).status

    def wait_exited(self, container_id: str, *, timeout: float = 60.0) -> Any:
        """The ``ContainerStatus`` of ``container_id`` once it has exited (a kubelet polls
        too); `TimeoutError` if it runs longer than ``timeout`` seconds."""
        exited = enum_value("ContainerState", "CONTAINER_EXITED")
        deadline = time.monotonic() + timeout
        while True:
            status = self.container_status(container_id)
            if status.state == exited:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"container {container_id}: still {status.state} after {timeout}s"
                )
            time.sleep(0.1)
