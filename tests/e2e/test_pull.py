"""``fusesnap pull`` / ``images`` / ``rmi`` / ``gc`` against a real Distribution registry."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fusesnap.digest import Digest
from fusesnap.store import open_store
from tests.e2e.cli import fusesnap_cmd, run
from tools.faultproxy import FaultProxy
from tools.images.catalog import PushedImage, build_and_push
from tools.registry import HtpasswdAuth, Registry, TokenAuth
from tools.tokenserver import TokenServer

pytestmark = pytest.mark.e2e


def stored(root: Path) -> dict[str, int]:
    """Digest -> size of every blob (manifests, configs) and indexed layer in the store,
    each checked: blobs re-hashed, layers complete with every chunk verified on read."""
    out = {}
    with open_store(root) as store:
        for info in store.content.list():
            h = hashlib.sha256()
            for piece in store.content.iter_bytes(info.digest):
                h.update(piece)
            assert f"sha256:{h.hexdigest()}" == info.digest, f"{info.digest} corrupt in store"
            out[str(info.digest)] = info.size
        for layer in store.layers.list():
            presence = store.layers.present_chunks(layer.digest)
            assert presence.present == presence.total, f"layer {layer.digest} incomplete"
            for chunk in store.layers.chunk_digests(layer.digest):
                store.chunks.get(chunk)  # raises unless it hashes to its key
            out[str(layer.digest)] = layer.size
    return out


def image_blobs(
    img: PushedImage, manifest_digest: str | None = None, *, creds: tuple[str, ...] = ()
) -> set[str]:
    """Every digest a pulled image needs (index if any, manifest, config, layers), as the
    registry serves them."""
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", *creds, f"docker://{img.ref}"],
        capture_output=True,
        check=True,
    ).stdout
    doc = json.loads(raw)
    want = {img.manifest_digest}
    if "manifests" in doc:
        assert manifest_digest is not None
        want.add(manifest_digest)
        raw = subprocess.run(
            [
                "skopeo",
                "inspect",
                "--raw",
                "--tls-verify=false",
                *creds,
                f"docker://{img.host}/{img.repo}@{manifest_digest}",
            ],
            capture_output=True,
            check=True,
        ).stdout
        doc = json.loads(raw)
    want.add(doc["config"]["digest"])
    want.update(layer["digest"] for layer in doc["layers"])
    return want


@pytest.mark.parametrize(
    ("compression", "docker_v2"),
    [("gzip", False), ("zstd", False), ("none", False), ("gzip", True)],
    ids=["oci-gzip", "oci-zstd", "oci-uncompressed", "docker-v2s2"],
)
def test_pull_by_tag_and_by_digest(registry, tmp_path, compression, docker_v2) -> None:
    img = build_and_push("busybox", registry, compression=compression, docker_v2=docker_v2)
    root = tmp_path / "store"
    out = run(root, "pull", img.ref).stdout
    assert img.manifest_digest in out
    assert stored(root).keys() == image_blobs(img)

    by_digest = f"{img.host}/{img.repo}@{img.manifest_digest}"
    out = run(root, "pull", by_digest).stdout
    assert "fetched 0 B" in out, out  # everything was already in the store
    names = run(root, "images", "-q").stdout.split()
    assert sorted(names) == sorted([img.ref, by_digest])
    listing = run(root, "images").stdout
    assert Digest(img.manifest_digest).short in listing


def test_pull_multi_platform_index(registry, tmp_path) -> None:
    img = build_and_push("busybox-multi", registry)
    platforms = dict(img.manifests)
    assert {"linux/amd64", "linux/arm64/v8"} <= platforms.keys()

    root = tmp_path / "amd64"
    run(root, "pull", "--platform", "linux/amd64", img.ref)
    assert stored(root).keys() == image_blobs(img, platforms["linux/amd64"])

    root = tmp_path / "arm64"
    run(root, "pull", "--platform", "linux/arm64", img.ref)
    assert stored(root).keys() == image_blobs(img, platforms["linux/arm64/v8"])
    assert "linux/arm64" in run(root, "images").stdout

    bad = run(tmp_path / "s390x", "pull", "--platform", "linux/s390x", img.ref, check=False)
    assert bad.returncode == 1
    assert "no manifest for platform linux/s390x" in bad.stderr
    assert "Traceback" not in bad.stderr


def _docker_config(tmp_path: Path, host: str, user: str, password: str) -> dict[str, str]:
    cfg = tmp_path / "docker"
    cfg.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(cfg)}


def test_private_repository_behind_token_auth(tmp_path) -> None:
    tokens = TokenServer({"alice": "s3cret-pw"}, expires_in=60)
    with tokens, Registry(tmp_path / "reg", auth=TokenAuth(tokens)) as reg:
        img = build_and_push("busybox", reg, creds=("alice", "s3cret-pw"))
        root = tmp_path / "store"

        anon = run(root, "pull", img.ref, check=False, env={"DOCKER_CONFIG": str(tmp_path)})
        assert anon.returncode == 1
        assert "authentication failed" in anon.stderr
        assert "Traceback" not in anon.stderr

        wrong = _docker_config(tmp_path / "wrong", reg.host, "alice", "nope-pw")
        bad = run(root, "pull", img.ref, check=False, env=wrong)
        assert bad.returncode == 1
        assert "authentication failed" in bad.stderr
        assert "nope-pw" not in bad.stderr + bad.stdout

        good = _docker_config(tmp_path / "good", reg.host, "alice", "s3cret-pw")
        before = tokens.token_requests
        out = run(root, "-v", "pull", img.ref, env=good)
        assert "s3cret-pw" not in out.stderr + out.stdout  # not even in debug logs
        assert tokens.token_requests > before
        assert stored(root).keys() == image_blobs(img, creds=("--creds", "alice:s3cret-pw"))
        with open_store(root) as store:
            assert store.images.get(img.ref).manifest_digest == img.manifest_digest


def test_private_repository_behind_basic_auth(tmp_path) -> None:
    with Registry(tmp_path / "reg", auth=HtpasswdAuth({"bob": "hunter2-pw"})) as reg:
        img = build_and_push("busybox", reg, creds=("bob", "hunter2-pw"))
        root = tmp_path / "store"
        anon = run(root, "pull", img.ref, check=False, env={"DOCKER_CONFIG": str(tmp_path)})
        assert anon.returncode == 1
        assert "authentication failed" in anon.stderr
        good = _docker_config(tmp_path, reg.host, "bob", "hunter2-pw")
        run(root, "pull", img.ref, env=good)
        with open_store(root) as store:
            assert store.images.get(img.ref).manifest_digest == img.manifest_digest


def test_corrupted_blob_is_refused_and_nothing_stored(tmp_path) -> None:
    with Registry(tmp_path / "reg") as reg:
        img = build_and_push("busybox", reg)
        layer = img.layers[0]
        path = reg.blob_path(layer.digest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))

        root = tmp_path / "store"
        proc = run(root, "pull", img.ref, check=False)
        assert proc.returncode == 1
        assert "digest mismatch" in proc.stderr
        assert Digest(layer.digest).short in proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert layer.digest not in stored(root)
        assert run(root, "images", "-q").stdout.strip() == ""
        with open_store(root) as store:
            assert store.content.ingests() == []


@pytest.mark.parametrize("fault", ["500", "drop", "cut", "429"])
def test_pull_survives_flaky_registry(registry, tmp_path, fault) -> None:
    img = build_and_push("busybox", registry)
    with FaultProxy(registry.host) as proxy:
        ref = img.ref.replace(registry.host, proxy.host)
        if fault == "500":
            proxy.fail_next(3, status=500)
        elif fault == "429":
            proxy.fail_next(2, status=429, retry_after=0.2)
        elif fault == "drop":
            proxy.drop_next(3)
        else:
            proxy.cut_body_next(2, after_bytes=100_000, kind="blob")
        root = tmp_path / "store"
        run(root, "pull", ref)
        assert stored(root).keys() == image_blobs(img)
        assert proxy.count() >= 4  # the faults were really served


def test_pull_gives_up_with_clear_error(registry, tmp_path) -> None:
    img = build_and_push("busybox", registry)
    with FaultProxy(registry.host) as proxy:
        ref = img.ref.replace(registry.host, proxy.host)
        proxy.fail_next(1000, status=503)
        root = tmp_path / "store"
        proc = run(root, "pull", ref, check=False, timeout=120)
        assert proc.returncode == 1
        assert "503" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert run(root, "images", "-q").stdout.strip() == ""


def _wait_for_bytes(proxy: FaultProxy, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while proxy.bytes_sent("blob") < n:
        assert time.monotonic() < deadline, "pull made no progress"
        time.sleep(0.02)


def test_pull_killed_then_rerun(registry, tmp_path) -> None:
    img = build_and_push("crafted-big", registry, big_size=24 * 1024 * 1024)
    total = sum(layer.size for layer in img.layers)
    root = tmp_path / "store"
    with FaultProxy(registry.host) as proxy:
        ref = img.ref.replace(registry.host, proxy.host)
        proxy.rate_limit(8 * 1024 * 1024)
        for fraction in (0.1, 0.4, 0.7):
            start = proxy.bytes_sent("blob")
            p = subprocess.Popen(
                fusesnap_cmd(root, "pull", ref),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_for_bytes(proxy, start + int(total * fraction / 3))
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            # The store opens, lists and collects cleanly after every kill.
            run(root, "images")
            run(root, "content", "ls")
            leases = run(root, "lease", "ls").stdout
            assert "dead" in leases or leases.count("\n") <= 1
            stored(root)
        proxy.rate_limit(None)
        before = proxy.bytes_sent("blob")
        run(root, "pull", ref)
        resumed = proxy.bytes_sent("blob") - before
    assert resumed < total, "the rerun downloaded everything again instead of resuming"
    assert stored(root).keys() == image_blobs(img)
    out = run(root, "gc").stdout
    assert "removed 0 blobs, 0 layers, 0 chunks" in out
    assert "dead" not in run(root, "lease", "ls").stdout


def test_gc_spares_a_pull_in_progress(registry, tmp_path) -> None:
    img = build_and_push("crafted-big", registry, big_size=24 * 1024 * 1024)
    root = tmp_path / "store"
    with FaultProxy(registry.host) as proxy:
        ref = img.ref.replace(registry.host, proxy.host)
        proxy.rate_limit(16 * 1024 * 1024)
        p = subprocess.Popen(
            fusesnap_cmd(root, "pull", ref),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for_bytes(proxy, 2 * 1024 * 1024)
        for _ in range(3):
            out = run(root, "gc").stdout
            assert "removed 0 blobs, 0 layers, 0 chunks" in out, out
            assert "0 partial downloads" in out, out
            time.sleep(0.2)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert stored(root).keys() == image_blobs(img)


def test_shared_layers_stored_once_and_rmi_gc(registry, tmp_path) -> None:
    a = build_and_push("busybox", registry, tag="a")
    b = build_and_push("busybox", registry, repo="fusesnap-test/busybox-copy", tag="b")
    c = build_and_push("crafted-whiteouts", registry)
    root = tmp_path / "store"
    for img in (a, b, c):
        run(root, "pull", img.ref)
    blobs = stored(root)
    assert blobs.keys() == image_blobs(a) | image_blobs(b) | image_blobs(c)
    # a and b share every blob: the layer is stored once, not twice.
    assert len(blobs) == len(image_blobs(a) | image_blobs(c))

    run(root, "rmi", a.ref)
    assert run(root, "gc").stdout.strip().endswith("0 partial downloads")
    assert stored(root).keys() == image_blobs(b) | image_blobs(c)  # b still needs a's blobs

    run(root, "rmi", c.ref)
    out = run(root, "gc").stdout
    only_c = image_blobs(c) - image_blobs(b)
    for digest in only_c:
        assert digest in out
    assert stored(root).keys() == image_blobs(b)


def test_bad_input_gives_one_line_errors(registry, tmp_path) -> None:
    root = tmp_path / "store"
    for args, needle in [
        (("pull", "Not/Valid"), "invalid reference"),
        (("pull", f"{registry.host}/no/such:tag"), "not found"),
        (("rmi", "never-pulled"), "not found"),
        (("content", "rm", "sha256:abc"), "invalid digest"),
    ]:
        proc = run(root, *args, check=False)
        assert proc.returncode == 1, (args, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    verbose = run(root, "-v", "rmi", "never-pulled", check=False)
    assert "Traceback" in verbose.stderr
