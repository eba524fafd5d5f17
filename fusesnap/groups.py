"""The one error a caller should see from a trio nursery's (possibly nested) exception group."""

from __future__ import annotations

import trio

__all__ = ["first_error"]


def first_error(exc: BaseException) -> BaseException:
    """The first real error inside ``exc``, looking through nested exception groups.

    A plain `Exception` wins; failing that, the first leaf that is not a
    cancellation (a `KeyboardInterrupt`, say); failing that, the first leaf. A
    non-group ``exc`` is returned as it is.
    """
    leaves = list(_leaves(exc))
    for wanted in (
        lambda e: isinstance(e, Exception),
        lambda e: not isinstance(e, trio.Cancelled),
    ):
        found = next((e for e in leaves if wanted(e)), None)
        if found is not None:
            return found
    return leaves[0]


def _leaves(exc: BaseException) -> list[BaseException]:
    if not isinstance(exc, BaseExceptionGroup):
        return [exc]
    return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
