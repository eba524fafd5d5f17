"""The pull benchmark's reading of tc rates (the link time its goal is measured against)."""

from __future__ import annotations

import pytest

from tools.bench.pull import link_bytes_per_second


@pytest.mark.parametrize(
    ("rate", "bytes_per_second"),
    [("100mbit", 12.5e6), ("1gbit", 125e6), ("512kbit", 64e3), ("12mbps", 12e6), ("800bit", 100)],
)
def test_rates(rate: str, bytes_per_second: float) -> None:
    assert link_bytes_per_second(rate) == bytes_per_second


@pytest.mark.parametrize("rate", ["fast", "100", "100 mbit", "-1mbit"])
def test_bad_rates(rate: str) -> None:
    with pytest.raises(ValueError, match="cannot read rate"):
        link_bytes_per_second(rate)
