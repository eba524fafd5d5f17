"""`first_error`: what a nursery's exception group shows its caller."""

from __future__ import annotations

import pytest
import trio

from fusesnap.groups import first_error


def _cancelled() -> trio.Cancelled:
    # What a cancelled task raises; trio gives it no public constructor.
    return trio.Cancelled._create()


def test_plain_error_is_returned_as_is() -> None:
    err = ValueError("x")
    assert first_error(err) is err


def test_nested_groups_yield_the_first_real_error() -> None:
    err = OSError("disk")
    group = BaseExceptionGroup("outer", [_cancelled(), ExceptionGroup("inner", [err])])
    assert first_error(group) is err


def test_interrupt_beats_cancellation() -> None:
    stop = KeyboardInterrupt()
    group = BaseExceptionGroup("g", [_cancelled(), stop])
    assert first_error(group) is stop


def test_only_cancellations_give_a_cancellation() -> None:
    group = BaseExceptionGroup("g", [_cancelled()])
    assert isinstance(first_error(group), trio.Cancelled)


async def test_a_nursery_failure_reaches_the_caller() -> None:
    async def boom() -> None:
        raise LookupError("gone")

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.start_soon(boom)

    with pytest.raises(BaseExceptionGroup) as info:
        await run()
    found = first_error(info.value)
    assert isinstance(found, LookupError)
    assert str(found) == "gone"
