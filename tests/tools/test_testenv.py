"""The CI rule: a missing tool skips a test, except under CI=true where it fails it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.testenv import missing

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
from tests import conftest
from tests.conftest import pytest_runtest_makereport, pytest_runtest_setup  # noqa: F401

def pytest_configure(config):
    conftest.pytest_configure(config)
    config.addinivalue_line("markers", "e2e: as in pyproject.toml")
"""

SAMPLE = """
import pytest

@pytest.mark.requires("fusesnap-no-such-tool")
def test_marked():
    pass

@pytest.mark.e2e
def test_e2e_skipping():
    pytest.skip("not today")

def test_plain_skip():
    pytest.skip("fine anywhere")
"""


def test_missing() -> None:
    assert missing("skopeo", sys.executable, "fusesnap-no-such-tool", "/no/such/path") == [
        "fusesnap-no-such-tool",
        "/no/such/path",
    ]


@pytest.mark.parametrize(
    ("ci", "expected"),
    [
        ("", ["3 skipped"]),
        # A missing tool fails at setup (an error), a skipped e2e test fails at call.
        ("true", ["1 failed", "1 skipped", "1 error"]),
    ],
)
def test_ci_turns_skips_into_failures(tmp_path: Path, ci: str, expected: list[str]) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": ci}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:trio",
            "-o",
            "addopts=--strict-markers",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    summary = proc.stdout.splitlines()[-1]
    assert all(part in summary for part in expected), proc.stdout
    if ci:
        assert "e2e test skipped under CI=true: Skipped: not today" in proc.stdout
