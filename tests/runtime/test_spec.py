"""The OCI runtime config built from an image config: args, env, user, defaults."""

from __future__ import annotations

import pytest

from fusesnap.containers.spec import (
    DEFAULT_PATH,
    ProcessOptions,
    SpecError,
    User,
    build_spec,
    merge_env,
    process_args,
    resolve_user,
)

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1001:App:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
"""
GROUP = """\
root:x:0:
daemon:x:1:
staff:x:50:app,daemon
appgrp:x:1001:
audio:x:29:app
nogroup:x:65534:
"""


def test_args_are_entrypoint_plus_cmd_and_the_command_replaces_cmd() -> None:
    cfg = {"Entrypoint": ["/entry", "-x"], "Cmd": ["serve"]}
    assert process_args(cfg) == ["/entry", "-x", "serve"]
    assert process_args(cfg, ["sh", "-c", "true"]) == ["/entry", "-x", "sh", "-c", "true"]
    assert process_args({"Cmd": ["bash"]}, ["python3"]) == ["python3"]
    assert process_args({"Cmd": "echo hi"}) == ["/bin/sh", "-c", "echo hi"]
    with pytest.raises(SpecError, match="no Entrypoint or Cmd"):
        process_args({})
    with pytest.raises(SpecError, match="Cmd"):
        process_args({"Cmd": [1]})


def test_env_overrides_by_key_and_defaults_path_and_home() -> None:
    env = merge_env(["PATH=/bin", "A=1", "B=2"], ["B=3", "C=x=y"], home="/root")
    assert env == ["PATH=/bin", "A=1", "B=3", "C=x=y", "HOME=/root"]
    assert merge_env(None) == [f"PATH={DEFAULT_PATH}"]
    assert merge_env(["HOME=/h"], home="/root") == ["HOME=/h", f"PATH={DEFAULT_PATH}"]
    with pytest.raises(SpecError, match="KEY=VALUE"):
        merge_env([], ["NOEQUALS"])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", User(0, 0, (), "/root")),
        ("root", User(0, 0, (), "/root")),
        ("app", User(1000, 1001, (50, 29), "/home/app")),
        ("1000", User(1000, 1001, (50, 29), "/home/app")),
        ("app:staff", User(1000, 50, (29,), "/home/app")),
        ("app:7", User(1000, 7, (50, 29), "/home/app")),
        ("65534", User(65534, 65534, (), "/nonexistent")),
        ("nobody", User(65534, 65534, (), "/nonexistent")),
        ("4242", User(4242, 0, (), "/")),  # not in passwd: taken as is
        ("4242:4243", User(4242, 4243, (), "/")),
    ],
)
def test_user_resolution(spec: str, expected: User) -> None:
    assert resolve_user(spec, PASSWD, GROUP) == expected


def test_unknown_user_or_group_names_are_errors() -> None:
    with pytest.raises(SpecError, match=r"'ghost'.*passwd"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(SpecError, match=r"'ghosts'.*group"):
        resolve_user("app:ghosts", PASSWD, GROUP)
    assert resolve_user("1", "", "") == User(1, 0)  # an image without /etc/passwd


def test_spec_has_runc_defaults_and_image_settings() -> None:
    cfg = {"Cmd": ["bash"], "Env": ["PATH=/usr/bin"], "WorkingDir": "/srv", "User": "app"}
    user = resolve_user(cfg["User"], PASSWD, GROUP)  # type: ignore[arg-type]
    options = ProcessOptions(command=["id"], env=["X=1"])
    spec = build_spec(cfg, options, rootfs="/r", user=user, hostname="c1")
    proc = spec["process"]
    assert proc["args"] == ["id"]
    assert proc["env"] == ["PATH=/usr/bin", "X=1", "HOME=/home/app"]
    assert proc["cwd"] == "/srv"
    assert proc["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [50, 29]}
    assert proc["terminal"] is False
    assert proc["capabilities"]["bounding"] == [
        "CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE",
    ]  # fmt: skip
    assert spec["root"] == {"path": "/r", "readonly": False}
    assert spec["hostname"] == "c1"
    assert [m["destination"] for m in spec["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
    ]  # fmt: skip
    assert "ro" in spec["mounts"][-1]["options"]
    types = [n["type"] for n in spec["linux"]["namespaces"]]
    assert sorted(types) == ["ipc", "mount", "network", "pid", "uts"]
    assert "seccomp" not in spec["linux"]


def test_spec_options() -> None:
    user = User(0, 0)
    options = ProcessOptions(terminal=True, net_host=True, workdir="/tmp", readonly=True)
    spec = build_spec({"Cmd": ["sh"]}, options, rootfs="/r", user=user)
    assert "network" not in [n["type"] for n in spec["linux"]["namespaces"]]
    assert spec["process"]["terminal"] is True
    assert "TERM=xterm" in spec["process"]["env"]
    assert spec["process"]["cwd"] == "/tmp"
    assert spec["root"] == {"path": "/r", "readonly": True}
    default = build_spec({"Cmd": ["sh"]}, ProcessOptions(), rootfs="/r", user=user)
    assert default["process"]["cwd"] == "/"
    with pytest.raises(SpecError, match="absolute"):
        build_spec({"Cmd": ["sh"]}, ProcessOptions(workdir="rel"), rootfs="/r", user=user)
