"""stargz-snapshotter's gRPC daemon, built from Debian's packages, for the benchmarks.

    python -m tools.bench.stargz      build it if need be; print the binary's path

Debian ships stargz-snapshotter's library (``golang-github-containerd-stargz-snapshotter-dev``)
and its ``ctr-remote``, not its daemon. The daemon's ``main`` is ours,
``tools/bench/stargz/main.go``: the library's ``service.NewStargzSnapshotterService``
served with containerd's ``contrib/snapshotservice`` over a unix socket. `ensure_daemon`
builds it on first use:

1. installs `PACKAGES` when one is missing (``apt-get install --no-install-recommends``;
   ``apt-get update`` first when apt has no candidate for one of them);
2. takes the build from `CACHE_DIR`/KEY when there, KEY hashing main.go, ``go version``,
   containerd's version and every installed ``golang-*-dev`` package's;
3. otherwise lays out a GOPATH in a temporary directory: our main, and ``k8s.io/cri-api``,
   which the library's resolver imports and Debian ships only in the ``vendor/`` of the
   ``containerd`` *source* package (fetched with ``apt-get source --download-only``
   through a private deb-src list made from the system's Debian sources, its indexes in
   the temporary directory: the system's apt state is not touched);
4. builds in GOPATH mode (``GO111MODULE=off``, ``CGO_ENABLED=0``) against
   ``/usr/share/gocode``, and renames the binary into the cache (other keys are removed).

`StargzDaemon` runs the binary on a root directory of its own; the layers it mounts
(FUSE, served in the daemon) are under that root, and go when it stops.

Concurrency: builders in different processes are serialised by a lock in `CACHE_DIR`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from tools._process import stop_process
from tools.bench.common import (
    STOP_TIMEOUT,
    end_processes,
    mounts_under,
    progress,
    start_daemon,
)
from tools.images.cache import locked

__all__ = [
    "CACHE_DIR",
    "PACKAGES",
    "StargzBuildError",
    "StargzDaemon",
    "ensure_daemon",
    "library_version",
]

# The Debian packages the build needs: the Go toolchain and the library's sources, which
# pull in every other Go package it imports but one (k8s.io/cri-api, see SOURCE_PACKAGE).
PACKAGES = ("golang-go", "golang-github-containerd-stargz-snapshotter-dev")
SOURCE_PACKAGE = "containerd"
CRI_API = "vendor/k8s.io/cri-api"
CACHE_DIR = Path("/var/cache/fusesnap-bench/stargz-grpc")
BINARY = "stargz-grpc"
MAIN_GO = Path(__file__).with_name("stargz") / "main.go"
IMPORT_PATH = "fusesnap.local/stargz-grpc"  # where main.go sits in the GOPATH
GOCODE = "/usr/share/gocode"
BUILD_TIMEOUT = 1800.0
# A Debian archive among the apt sources: ".../debian" or ".../debian-security".
_DEBIAN_URI = re.compile(r"^\w+://\S+/debian(-security)?/?$")


class StargzBuildError(RuntimeError):
    """The daemon could not be built; the message is one line: the step and why."""


def ensure_daemon() -> Path:
    """The path of the built daemon, built first if need be (see the module docstring).
    `StargzBuildError` when a step fails."""
    install_packages(PACKAGES)
    key = cache_key()
    binary = CACHE_DIR / key / BINARY
    if binary.exists():
        return binary
    try:
        with locked(CACHE_DIR / "build.lock"):
            if not binary.exists():
                build_into(binary)
    except OSError as exc:
        raise StargzBuildError(f"building into {CACHE_DIR}: {exc}") from exc
    return binary


def build_into(binary: Path) -> None:
    """Build the daemon as ``binary``, with a ``VERSIONS`` file beside it; the other
    builds in its cache directory are removed."""
    progress("building stargz-snapshotter's daemon from Debian's packages ...")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fusesnap-stargz-") as tmp:
        built, source_version = build(Path(tmp))
        for old in binary.parent.parent.iterdir():
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        binary.parent.mkdir(parents=True)
        (binary.parent / "VERSIONS").write_text(
            f"{versions_text()}k8s.io/cri-api from {SOURCE_PACKAGE} {source_version}\n"
        )
        # Copied under another name, then renamed: a binary there is a whole one.
        partial = binary.with_name(f"{BINARY}.partial")
        shutil.copyfile(built, partial)
        partial.chmod(0o755)
        partial.rename(binary)
    progress(f"  built in {time.monotonic() - started:.0f} s: {binary}")


# -- the steps -------------------------------------------------------------------------------


def _run(
    what: str, cmd: list[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``cmd``, its output captured; `StargzBuildError` naming ``what`` and the command's
    last error line if it fails."""
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            text=True,
            capture_output=True,
            check=False,
            timeout=BUILD_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StargzBuildError(f"{what}: {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines()]
        # apt's "E: ..." and go's "FILE:LINE:COL: cannot find package ..." come first;
        # a compile error is go's last line.
        errors = [x for x in lines if x.startswith("E:") or ": cannot " in x or "error" in x]
        why = errors[0] if errors else next((x for x in reversed(lines) if x), "no output")
        raise StargzBuildError(f"{what}: {cmd[0]} exited {proc.returncode}: {why}")
    return proc


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


def install_packages(packages: tuple[str, ...]) -> None:
    """``apt-get install`` those of ``packages`` that are not installed."""
    missing = [p for p in packages if installed_version(p) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise StargzBuildError(f"Debian packages missing, and not root: {' '.join(missing)}")
    known = _run("apt-cache", ["apt-cache", "policy", *missing]).stdout
    if "Candidate: (none)" in known or known.count("Candidate:") < len(missing):
        progress("apt-get update ...")
        _run("apt-get update", ["apt-get", "update"], env=_apt_env())
    progress(f"installing {' '.join(missing)} (apt-get) ...")
    install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    _run(f"installing {' '.join(missing)}", install, env=_apt_env())


def library_version() -> str:
    """The upstream version of the stargz-snapshotter library built in (``0.12.0``)."""
    version = installed_version(PACKAGES[1]) or "?"
    return re.sub(r"^\d+:|-[^-]*$", "", version)


def installed_version(package: str) -> str | None:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Version}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    status, _, version = proc.stdout.partition(" ")
    return version.strip() if proc.returncode == 0 and status.startswith("ii") else None


def versions_text() -> str:
    """What the build is made of, a line each: the Go toolchain, containerd, and every
    installed Go library package."""
    go = _run("go version", ["go", "version"]).stdout.strip()
    libs = _run(
        "dpkg-query",
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package} ${Version}\n", "golang-*-dev"],
    ).stdout
    lines = sorted(line[4:] for line in libs.splitlines() if line.startswith("ii"))
    containerd = f"containerd {installed_version('containerd')}"
    return "".join(f"{line}\n" for line in [go, containerd, *lines])


def cache_key() -> str:
    digest = hashlib.sha256(MAIN_GO.read_bytes())
    digest.update(versions_text().encode())
    return digest.hexdigest()[:16]


def build(work: Path) -> tuple[Path, str]:
    """Build the daemon in ``work``; its path and the version of the source package its
    ``k8s.io/cri-api`` came from."""
    gopath = work / "gopath"
    pkg = gopath / "src" / IMPORT_PATH
    pkg.mkdir(parents=True)
    shutil.copyfile(MAIN_GO, pkg / "main.go")
    version = fetch_cri_api(work / "apt", gopath / "src" / "k8s.io" / "cri-api")
    progress(f"  go build (GOPATH mode, {GOCODE}) ...")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}:{GOCODE}",
        "GOCACHE": str(work / "go-build"),
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    out = work / BINARY
    _run("go build", ["go", "build", "-o", str(out), "."], cwd=pkg, env=env)
    return out, version


def fetch_cri_api(apt_dir: Path, dest: Path) -> str:
    """Extract ``k8s.io/cri-api`` from the vendor directory of the ``containerd`` source
    package into ``dest``; the package's version."""
    lists = apt_dir / "lists"
    (lists / "partial").mkdir(parents=True)
    sources = apt_dir / "deb-src.sources"
    sources.write_text(deb_src_stanzas())
    apt_options = [
        f"-oDir::Etc::SourceList={sources}",
        "-oDir::Etc::SourceParts=/dev/null",
        f"-oDir::State::Lists={lists}",
        # No package caches of ours, and none of the system's rewritten from our lists.
        "-oDir::Cache::pkgcache=",
        "-oDir::Cache::srcpkgcache=",
        # _apt cannot enter a private temporary directory.
        "-oAPT::Sandbox::User=root",
    ]
    progress(f"  fetching the {SOURCE_PACKAGE} source package (k8s.io/cri-api) ...")
    _run("apt-get update (deb-src)", ["apt-get", *apt_options, "update"], env=_apt_env())
    download = ["apt-get", *apt_options, "source", "--download-only", SOURCE_PACKAGE]
    _run(f"apt-get source {SOURCE_PACKAGE}", download, cwd=apt_dir, env=_apt_env())
    dscs = sorted(apt_dir.glob(f"{SOURCE_PACKAGE}_*.dsc"))
    origs = sorted(apt_dir.glob(f"{SOURCE_PACKAGE}_*.orig.tar.*"))
    if not dscs or not origs:
        raise StargzBuildError(f"apt-get source {SOURCE_PACKAGE}: no .dsc or orig tarball")
    dest.mkdir(parents=True)
    # The tarball's top directory is containerd-VERSION/: strip it and vendor/k8s.io/.
    extract = ["tar", "-xf", str(origs[0]), "-C", str(dest), "--strip-components=4"]
    _run(f"extracting {CRI_API}", [*extract, "--wildcards", f"*/{CRI_API}/*"])
    if not any(dest.rglob("*.go")):
        raise StargzBuildError(f"{origs[0].name}: no Go files under {CRI_API}")
    return dscs[0].name.removeprefix(f"{SOURCE_PACKAGE}_").removesuffix(".dsc")


def deb_src_stanzas() -> str:
    """deb822 ``deb-src`` stanzas for the Debian archives among the system's apt sources
    (``sources.list.d/*.sources``; one-line ``*.list`` entries too)."""
    etc = Path("/etc/apt")
    stanzas = []
    for path in sorted(etc.glob("sources.list.d/*.sources")):
        for block in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, sep, value in (line.partition(":") for line in block.splitlines())
                if sep and not key.startswith(("#", " ", "\t"))
            )
            uris = [u for u in fields.get("uris", "").split() if _DEBIAN_URI.match(u)]
            if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
                continue
            if uris and fields.get("suites"):
                stanzas.append(_stanza(uris, fields["suites"], fields.get("components", "main"),
                                       fields.get("signed-by")))  # fmt: skip
    lists = [etc / "sources.list", *sorted(etc.glob("sources.list.d/*.list"))]
    for path in (p for p in lists if p.exists()):
        for line in path.read_text().splitlines():
            # deb [options] URI SUITE COMPONENT...
            words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb" and _DEBIAN_URI.match(words[1]):
                stanzas.append(_stanza([words[1]], words[2], " ".join(words[3:]) or "main", None))
    if not stanzas:
        raise StargzBuildError("no Debian archive among the apt sources (/etc/apt)")
    return "\n".join(stanzas)


def _stanza(uris: list[str], suites: str, components: str, signed_by: str | None) -> str:
    lines = ["Types: deb-src", f"URIs: {' '.join(uris)}", f"Suites: {suites}"]
    lines.append(f"Components: {components}")
    if signed_by:
        lines.append(f"Signed-By: {signed_by}")
    return "\n".join(lines) + "\n"


# -- running it ------------------------------------------------------------------------------


class StargzDaemon:
    """``stargz-grpc -address SOCK -root ROOT``, in a session of its own; its output in
    ``log_path``.

    `start` returns once the socket accepts connections. `stop` sends SIGTERM (SIGKILL
    after `STOP_TIMEOUT`): the daemon unmounts its layers as it closes; then whatever
    else names ``root`` (a daemon of an interrupted run) is ended and what is still
    mounted under ``root`` is unmounted (``umount -l``). Idempotent.
    """

    def __init__(self, binary: Path, root: Path, sock: Path, log_path: Path) -> None:
        self.binary, self.root, self.sock, self.log_path = binary, root, sock, log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> StargzDaemon:
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.binary), "-address", str(self.sock), "-root", str(self.root)]
        self._proc = start_daemon(cmd, sock=self.sock, log_path=self.log_path)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout=STOP_TIMEOUT)
        end_processes(str(self.root))
        for mountpoint in reversed(mounts_under(self.root)):
            subprocess.run(["umount", "-l", mountpoint], capture_output=True, check=False)


if __name__ == "__main__":
    try:
        print(ensure_daemon())
    except StargzBuildError as exc:
        sys.exit(f"error: stargz-snapshotter's daemon: {exc}")
