"""The mount daemon's typed start: its options survive the trip to a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusesnap.mountd import DaemonOptions
from fusesnap.registry import DEFAULT_HOSTS_DIRS, RegistryOptions


def test_options_round_trip_through_json() -> None:
    options = DaemonOptions(
        Path("/var/lib/fusesnap"),
        "busybox",
        Path("/mnt/x"),
        allow_other=True,
        cache_bytes=1 << 20,
        prefetch="all",
        record=True,
        registry=RegistryOptions(
            ("localhost:5000", "10.0.0.1:5000"), "/etc/ca.pem", ("/srv/certs.d", "/etc/x")
        ),
        verbose=True,
    )
    assert DaemonOptions.from_json(options.to_json()) == options


def test_options_without_hosts_dirs_take_the_default() -> None:
    """A daemon's options written before ``--hosts-dir`` existed still start it."""
    doc = json.loads(DaemonOptions(Path("/r"), "busybox", Path("/m")).to_json())
    del doc["registry"]["hosts_dirs"]
    options = DaemonOptions.from_json(json.dumps(doc))
    assert options.registry.hosts_dirs == DEFAULT_HOSTS_DIRS


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    options = DaemonOptions(Path("store"), "busybox", Path("mnt")).absolute()
    assert (options.root, options.mountpoint) == (tmp_path / "store", tmp_path / "mnt")


@pytest.mark.parametrize(
    "text", ["", "[]", '{"root": "/r"}', '{"registry": {"ca_file": null}, "root": "/r"}']
)
def test_malformed_options_are_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="daemon options"):
        DaemonOptions.from_json(text)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        DaemonOptions(Path("/r"), "busybox", Path("/m"), prefetch="some")
    with pytest.raises(ValueError, match="cache_bytes"):
        DaemonOptions(Path("/r"), "busybox", Path("/m"), cache_bytes=0)


def test_the_daemon_entry_point_says_what_is_wrong_in_one_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fusesnap.mountd", "{not json", "9"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("fusesnap: error: daemon options:"), proc.stderr
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["3", "--takeover", "4"], "usage:"),  # no INIT
        (["3", "--takeover", "x", "00"], "usage:"),  # no descriptor
        (["3", "--takeover", "4", "zz"], "fusesnap: error:"),  # INIT not hex
    ],
)
def test_a_takeover_start_is_checked_before_anything_runs(args: list[str], says: str) -> None:
    options = DaemonOptions(Path("/nonexistent"), "busybox", Path("/nonexistent/mnt"))
    proc = subprocess.run(
        [sys.executable, "-m", "fusesnap.mountd", options.to_json(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(says), proc.stderr
    assert len(proc.stderr.splitlines()) == 1
