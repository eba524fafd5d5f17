from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio

from fusesnap.reference import Reference
from fusesnap.registry import RegistryClient, open_registry_client
from fusesnap.registry.credentials import Credentials
from fusesnap.registry.retry import RetryPolicy
from tests.lazy.fakeregistry import FakeRegistry

REF = Reference.parse("registry.example/team/app:1.0")


class Sleeps:
    """A `RetryPolicy.sleep` that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await trio.lowlevel.checkpoint()


Connect = Callable[..., AbstractAsyncContextManager[RegistryClient]]


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def connect(fake: FakeRegistry, sleeps: Sleeps) -> Connect:
    """``connect(credentials=…, attempts=…, **open_registry_client kwargs)``."""

    def connect(
        *, credentials: Credentials | None = None, attempts: int = 4, **kwargs: Any
    ) -> AbstractAsyncContextManager[RegistryClient]:
        return open_registry_client(
            transport=fake.transport(),
            retry=RetryPolicy(attempts=attempts, backoff=0.01, sleep=sleeps),
            credentials=lambda host: credentials,
            **kwargs,
        )

    return connect
