"""What a known language runtime reads as it starts (fusesnap.fs.runtimes)."""

from __future__ import annotations

import pytest

from fusesnap.fs.runtimes import startup_candidates

X86_64, AARCH64, UNKNOWN = 62, 183, 9999


def test_debian_python_reads_its_locale_codecs_and_sitecustomize() -> None:
    assert startup_candidates("/usr/bin/python3.11", X86_64) == [
        ["/usr/lib/locale/C.utf8/LC_CTYPE"],
        [
            "/usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
            "/usr/lib64/gconv/gconv-modules.cache",
            "/usr/lib/gconv/gconv-modules.cache",
        ],
        ["/usr/lib/python3.11/encodings/__pycache__/__init__.cpython-311.pyc"],
        ["/usr/lib/python3.11/encodings/__pycache__/aliases.cpython-311.pyc"],
        ["/usr/lib/python3.11/encodings/__pycache__/utf_8.cpython-311.pyc"],
        ["/usr/lib/python3.11/__pycache__/sitecustomize.cpython-311.pyc"],
    ]


def test_a_python_elsewhere_reads_its_own_prefix() -> None:
    # The official python images build into /usr/local; the machine picks the libdir.
    found = startup_candidates("/usr/local/bin/python3.12", AARCH64)
    assert found[1][0] == "/usr/lib/aarch64-linux-gnu/gconv/gconv-modules.cache"
    assert found[2] == ["/usr/local/lib/python3.12/encodings/__pycache__/__init__.cpython-312.pyc"]
    assert startup_candidates("/opt/py//bin/python3.9", UNKNOWN)[1] == [
        "/usr/lib64/gconv/gconv-modules.cache",
        "/usr/lib/gconv/gconv-modules.cache",
    ]
    assert startup_candidates("/opt/py//bin/python3.9", UNKNOWN)[-1] == [
        "/opt/py/lib/python3.9/__pycache__/sitecustomize.cpython-39.pyc"
    ]


@pytest.mark.parametrize(
    "program", ["/usr/bin/python3", "/usr/bin/python2.7", "/usr/bin/dash", "/usr/bin/python3.x"]
)
def test_other_programs_are_no_known_runtime(program: str) -> None:
    # python3 is the link; the program opened is the file it names (pythonX.Y).
    assert startup_candidates(program, X86_64) == []
