"""The goals table `make bench` ends with: numbers from the results file, goals met or not."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench import results, summary


def test_record_appends_rows_to_the_file_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.json"
    results.record("startup@link", "lazy", seconds=[1.0])  # no file set: nothing written
    assert not path.exists()
    monkeypatch.setenv(results.ENV, str(path))
    results.record("startup@link", "lazy", seconds=[1.0, 3.0, 2.0])
    results.record("startup@link", "full pull", seconds=[9.0])
    results.record("index", "build", baseline=1.0)
    assert results.load(path) == {
        "startup@link": {"lazy": {"seconds": [1.0, 3.0, 2.0]}, "full pull": {"seconds": [9.0]}},
        "index": {"build": {"baseline": 1.0}},
    }


def _verdicts(data: summary.Results) -> dict[str, str]:
    lines, _ = summary.goal_table(data)
    rows = [line.split(" | ") for line in lines[2:]]
    return {row[0].lstrip("| "): row[-1].rstrip(" |") for row in rows}


def test_goals_use_medians_and_say_which_were_not_measured() -> None:
    data: summary.Results = {
        "startup@link": {
            "lazy": {"seconds": [1.1, 5.0, 1.0], "ready": [0.3, 0.4, 0.2], "sent": [1]},
            "full pull": {"seconds": [9.0, 9.5, 9.2], "ready": [9.0], "sent": [80]},
        },
        "containerd@link": {
            "stargz": {"seconds": [1.5, 1.6, 1.4], "ready": [0.4], "sent": [5]},
            "fusesnap": {"seconds": [1.6, 1.6, 1.2], "ready": [0.5], "sent": [6]},
        },
        "read": {"debian: ls -lR, warm": {"fusesnap": 0.3, "local": 0.1, "squashfuse": 2.0}},
        "index": {"build": {"baseline": 1.0, "fusesnap": 1.2}},
    }
    verdicts = _verdicts(data)
    # median 1.1 s, 9.2 / 1.1 = 8.4x: both limits hold
    assert verdicts["lazy start, no profile (`mount` + chroot)"] == "yes"
    assert verdicts["cold mount ready on that link"] == "yes"  # median ready 0.3 s
    assert verdicts["Debian `ls -lR`, warm"] == "no"  # 3x local disk
    assert verdicts["index build vs `gzip -dc \\| tar -t`"] == "yes"  # 0.83x its speed
    # 1.6 s against stargz-snapshotter's 1.5 s: not faster
    assert verdicts["containerd start, index artifact, vs stargz-snapshotter"] == "no"
    assert verdicts["lazy start, with profile"] == "not measured"
    svg = summary.start_svg(data)
    assert svg.count("<rect ") == 1 + 4  # the background and one bar per measured mode
    assert "stargz-snapshotter" in svg
