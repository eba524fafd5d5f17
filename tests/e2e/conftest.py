"""Images the container tests share (built and pushed once per module that asks)."""

from __future__ import annotations

import pytest

from tools.images.catalog import PushedImage, build_and_push
from tools.registry import Registry


@pytest.fixture(scope="module")
def busybox(registry: Registry) -> PushedImage:
    return build_and_push("busybox", registry)


@pytest.fixture(scope="module")
def debian(registry: Registry) -> PushedImage:
    return build_and_push("debian", registry)
