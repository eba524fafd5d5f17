"""The real registry: starts, serves /v2/, authenticates, runs detached from the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tools.images import build_and_push
from tools.registry import HtpasswdAuth, Registry, RegistryError

pytestmark = pytest.mark.requires("docker-registry", "skopeo")

ROOT = Path(__file__).resolve().parents[2]


def test_registry_serves_v2(registry: Registry) -> None:
    resp = httpx.get(f"{registry.url}/v2/")
    assert resp.status_code == 200
    assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert registry.host.startswith("127.0.0.1:")
    assert (registry.data_dir / "config.yml").read_text().count("rootdirectory") == 1


def test_blob_path_is_the_stored_blob(registry: Registry) -> None:
    pushed = build_and_push("busybox", registry)
    layer = pushed.layers[0]
    path = registry.blob_path(layer.digest)
    assert path.stat().st_size == layer.size
    assert registry.blob_path(f"{pushed.repo}@{layer.digest}") == path


def test_blob_path_rejects_non_digests(registry: Registry) -> None:
    with pytest.raises(ValueError, match="not a sha256 digest"):
        registry.blob_path("sha256:abc")


def test_htpasswd_auth_accepts_good_and_refuses_bad_credentials(tmp_path: Path) -> None:
    with Registry(tmp_path, auth=HtpasswdAuth({"alice": "s3cret"})) as reg:
        assert httpx.get(f"{reg.url}/v2/").status_code == 401
        assert httpx.get(f"{reg.url}/v2/", auth=("alice", "s3cret")).status_code == 200
        assert httpx.get(f"{reg.url}/v2/", auth=("alice", "wrong")).status_code == 401
        pushed = build_and_push("busybox", reg, creds=("alice", "s3cret"))
        assert pushed.manifest_digest.startswith("sha256:")


def test_stop_terminates_and_removes_owned_dir() -> None:
    reg = Registry().start()
    data_dir, pid = reg.data_dir, reg.pid
    reg.stop()
    assert not data_dir.exists()
    assert pid is not None
    assert not Path(f"/proc/{pid}/cmdline").exists()


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    with Registry(tmp_path / "a") as first:
        clash = Registry(tmp_path / "b", port=first.port, start_timeout=5)
        with pytest.raises(RegistryError, match="address already in use"):
            clash.start()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.registry", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_start_is_idempotent_and_stop_stops(tmp_path: Path) -> None:
    first = _cli("start", "--dir", str(tmp_path))
    try:
        assert first.returncode == 0, first.stderr
        host = first.stdout.strip()
        assert httpx.get(f"http://{host}/v2/").status_code == 200
        again = _cli("start", "--dir", str(tmp_path))
        assert again.stdout.strip() == host
        pid = int((tmp_path / "registry.pid").read_text())
    finally:
        stopped = _cli("stop", "--dir", str(tmp_path))
    assert stopped.returncode == 0
    assert not Path(f"/proc/{pid}").exists() or "docker-registry" not in Path(
        f"/proc/{pid}/cmdline"
    ).read_text(errors="replace")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{host}/v2/")


def test_a_pull_through_cache_serves_what_its_origin_has(registry: Registry) -> None:
    pushed = build_and_push("busybox", registry)
    layer = pushed.layers[0]
    with Registry(proxy=registry.url, access_log=True) as mirror:
        url = f"{mirror.url}/v2/{pushed.repo}/blobs/{layer.digest}"
        first = httpx.get(url)
        assert first.status_code == 200
        assert len(first.content) == layer.size
        # Kept: a range of it now comes from the mirror's own storage.
        part = httpx.get(url, headers={"Range": "bytes=10-19"})
        assert (part.status_code, part.content) == (206, first.content[10:20])
        assert httpx.put(f"{mirror.url}/v2/{pushed.repo}/manifests/x").status_code >= 400
        path = url.removeprefix(mirror.url)
        seen = [(r.path, r.status, r.agent[:12]) for r in mirror.requests() if "/blobs/" in r.path]
        assert seen == [(path, 200, "python-httpx"), (path, 206, "python-httpx")]


def test_access_lines_are_read_from_a_mixed_log() -> None:
    from tools._accesslog import AccessRecord, parse_access_log

    text = (
        'time="2026-12-06T22:35:24Z" level=warning msg="x"\n'
        '127.0.0.1 - - [06/Dec/2026:22:35:24 +0000] "GET /v2/a/blobs/sha256:00?ns=r HTTP/1.1"'
        ' 206 10 "" "fusesnap/0.1.0"\n'
    )
    assert parse_access_log(text) == [
        AccessRecord("GET", "/v2/a/blobs/sha256:00?ns=r", 206, "fusesnap/0.1.0")
    ]
