"""The private containerd: its config, a real pull and run of busybox, and a clean stop."""

from __future__ import annotations

import os
import signal
import tomllib
from pathlib import Path

import pytest

from tools._net import wait_until
from tools.containerd import (
    CRI_PLUGIN,
    DISABLED_PLUGINS,
    REQUIRED_PLUGINS,
    ContainerdError,
    CriConfig,
    CtrError,
    PrivateContainerd,
    pull_args,
    unique_id,
)
from tools.images import build_and_push
from tools.registry import Registry

CONTAINERD_TOOLS = ("containerd", "ctr", "containerd-shim-runc-v2", "runc")


def test_config_names_its_own_dirs_sockets_and_proxy_snapshotters(tmp_path: Path) -> None:
    ctrd = PrivateContainerd(tmp_path, proxy_snapshotters={"fusesnap": "/run/fs.sock"})
    config = tomllib.loads(ctrd.config_toml())
    assert config["version"] == 2
    assert config["root"] == str(tmp_path / "root")
    assert config["state"] == str(tmp_path / "state")
    assert config["grpc"]["address"] == ctrd.address
    assert config["ttrpc"]["address"] == ctrd.ttrpc_address
    assert config["proxy_plugins"] == {"fusesnap": {"type": "snapshot", "address": "/run/fs.sock"}}
    assert "io.containerd.grpc.v1.cri" in config["disabled_plugins"]
    assert tuple(config["disabled_plugins"]) == DISABLED_PLUGINS


def test_a_cri_config_loads_and_requires_the_plugin_on_its_own_dirs(tmp_path: Path) -> None:
    cri = CriConfig(
        sandbox_image="127.0.0.1:5000/pause:1",
        snapshotter="fusesnap",
        plain_http=("127.0.0.1:5000",),
    )
    ctrd = PrivateContainerd(tmp_path, cri=cri)
    ctrd.write_config()
    config = tomllib.loads(ctrd.config_path.read_text())
    assert CRI_PLUGIN not in config["disabled_plugins"]
    assert config["required_plugins"] == [*REQUIRED_PLUGINS, CRI_PLUGIN]
    plugin = config["plugins"][CRI_PLUGIN]
    assert plugin["sandbox_image"] == "127.0.0.1:5000/pause:1"
    assert plugin["containerd"] == {
        "snapshotter": "fusesnap",
        "disable_snapshot_annotations": False,
    }
    assert plugin["cni"]["conf_dir"] == str(tmp_path / "cni")
    assert (tmp_path / "cni").is_dir()
    hosts = tomllib.loads(
        (Path(plugin["registry"]["config_path"]) / "127.0.0.1:5000" / "hosts.toml").read_text()
    )
    assert hosts["server"] == "http://127.0.0.1:5000"
    assert hosts["host"] == {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}


def test_a_deep_base_dir_gets_a_short_socket_dir(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["d" * 30] * 4)
    ctrd = PrivateContainerd(deep)
    socket_dir = ctrd.socket_dir
    try:
        assert len(os.fsencode(ctrd.ttrpc_address)) <= 107
        assert socket_dir.parent == Path("/run")
    finally:
        ctrd.stop()
    assert not socket_dir.exists()


def test_pull_args_ask_for_plain_http_on_loopback_only() -> None:
    assert pull_args("127.0.0.1:5000/a:b") == ["--plain-http", "127.0.0.1:5000/a:b"]
    assert pull_args("localhost:5000/a:b", snapshotter="fusesnap") == [
        "--plain-http",
        "--snapshotter",
        "fusesnap",
        "localhost:5000/a:b",
    ]
    assert pull_args("[::1]:5000/a:b")[0] == "--plain-http"
    assert pull_args("registry.example:5000/a:b") == ["registry.example:5000/a:b"]


@pytest.mark.e2e
@pytest.mark.requires(*CONTAINERD_TOOLS)
def test_pulls_and_runs_busybox_and_leaves_nothing_behind(
    tmp_path: Path, registry: Registry
) -> None:
    pushed = build_and_push("busybox", registry)
    with PrivateContainerd(tmp_path) as ctrd:
        ctrd.ctr("images", "pull", *pull_args(pushed.ref))
        run = ctrd.ctr("run", "--rm", pushed.ref, unique_id(), "echo", "hello")
        assert run.stdout.strip() == "hello"
        # A container still running at exit: stop() must take it and its shim down.
        running = unique_id()
        ctrd.ctr("run", "-d", pushed.ref, running, "sleep", "600")
        left = ctrd.leftovers()
        assert any(item.startswith("shim pid") for item in left), left
        assert any(item.startswith(f"runc container {running} with init") for item in left)
        assert any(item.startswith("mount ") for item in left), left
        assert list((tmp_path / "fifo").glob(f"*/{running}-stdout"))
        with pytest.raises(CtrError, match=r"exited 1") as info:
            ctrd.ctr("images", "pull", "--plain-http", "127.0.0.1:1/no/such:image")
        assert info.value.returncode == 1
    assert ctrd.leftovers() == []


@pytest.mark.e2e
@pytest.mark.requires(*CONTAINERD_TOOLS)
def test_stop_sweeps_up_after_a_crashed_containerd(tmp_path: Path, registry: Registry) -> None:
    pushed = build_and_push("busybox", registry)
    with PrivateContainerd(tmp_path) as ctrd:
        ctrd.ctr("images", "pull", *pull_args(pushed.ref))
        ctrd.ctr("run", "-d", pushed.ref, unique_id(), "sleep", "600")
        assert ctrd.pid is not None
        os.kill(ctrd.pid, signal.SIGKILL)  # no chance to delete its tasks
        assert wait_until(lambda: "containerd pid" not in str(ctrd.leftovers()), timeout=10)
        assert any(item.startswith("shim pid") for item in ctrd.leftovers())
    assert ctrd.leftovers() == []


@pytest.mark.e2e
@pytest.mark.requires(*CONTAINERD_TOOLS)
def test_a_failed_start_reports_the_log_and_leaves_nothing(tmp_path: Path) -> None:
    ctrd = PrivateContainerd(tmp_path, log_level="no-such-level", start_timeout=5)
    with pytest.raises(ContainerdError, match=r"containerd on .* exited") as info:
        ctrd.start()
    assert "no-such-level" in str(info.value)
    assert ctrd.leftovers() == []


@pytest.mark.e2e
@pytest.mark.requires(*CONTAINERD_TOOLS, "ctr-remote")
def test_ctr_remote_rpulls_into_overlayfs(tmp_path: Path, registry: Registry) -> None:
    pushed = build_and_push("busybox", registry)
    with PrivateContainerd(tmp_path) as ctrd:
        ctrd.ctr_remote("images", "rpull", *pull_args(pushed.ref, snapshotter="overlayfs"))
        assert pushed.ref in ctrd.ctr("images", "ls", "-q").stdout.split()
    assert ctrd.leftovers() == []


@pytest.mark.e2e
@pytest.mark.requires(*CONTAINERD_TOOLS)
def test_proxy_snapshotters_are_loaded_before_they_listen(tmp_path: Path) -> None:
    with PrivateContainerd(tmp_path, proxy_snapshotters={"nobody": tmp_path / "no.sock"}) as ctrd:
        plugins = [line.split() for line in ctrd.ctr("plugins", "ls").stdout.splitlines()]
        assert ["io.containerd.snapshotter.v1", "nobody", "-", "ok"] in plugins


@pytest.mark.e2e
@pytest.mark.requires(*CONTAINERD_TOOLS)
def test_a_cri_plugin_that_cannot_load_stops_containerd_at_start(tmp_path: Path) -> None:
    cri = CriConfig(sandbox_image="127.0.0.1:1/pause:1", snapshotter="no-such-snapshotter")
    ctrd = PrivateContainerd(tmp_path, cri=cri, start_timeout=10)
    with pytest.raises(ContainerdError, match=r"exited") as info:
        ctrd.start()
    assert (
        f"load required plugin {CRI_PLUGIN}: failed to create CRI service:"
        ' failed to find snapshotter "no-such-snapshotter"'
    ) in str(info.value)
    assert ctrd.leftovers() == []
