"""The exceptions ssebus raises: shown by their public path, one class per situation, and
the hierarchy drawn at the top of ``ssebus._exceptions`` kept whole."""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass

import pytest
from redis_support import REDIS_URL

import ssebus
import ssebus._exceptions
from ssebus import (
    DuplicateConnectionError,
    InvalidArgumentError,
    SseBusError,
    UnregisteredEventError,
)
from ssebus.redis import RedisEventBus

PUBLIC_ERRORS = sorted(
    (
        value
        for value in (getattr(ssebus, name) for name in ssebus.__all__)
        if isinstance(value, type) and issubclass(value, BaseException)
    ),
    key=lambda cls: cls.__name__,
)


def test_there_are_public_errors_to_check() -> None:
    assert len(PUBLIC_ERRORS) >= 8
    assert all(cls.__name__ in ssebus.__all__ for cls in PUBLIC_ERRORS)


@pytest.mark.parametrize("cls", PUBLIC_ERRORS, ids=lambda cls: cls.__name__)
def test_an_error_is_shown_by_its_public_path(cls: type[BaseException]) -> None:
    assert repr(cls) == f"<class 'ssebus.{cls.__name__}'>"
    assert getattr(ssebus, cls.__name__) is cls
    error = cls.__new__(cls)
    try:
        raise error
    except BaseException as exc:
        printed = traceback.format_exception(exc)
    assert printed[-1].startswith(f"ssebus.{cls.__name__}")
    assert traceback.format_exception_only(error)[-1].startswith(f"ssebus.{cls.__name__}")


def drawn_tree() -> dict[str, int]:
    """Each error drawn in the module docstring's tree, with how deep it is drawn."""
    doc = ssebus._exceptions.__doc__ or ""
    found = re.findall(r"^([ │├└─]*)([A-Z]\w+Error)\b", doc, flags=re.MULTILINE)
    tree = {name: len(prefix) for prefix, name in found}
    assert len(tree) == len(found), "an error is drawn twice"
    return tree


def test_the_docstring_tree_draws_every_public_error_under_its_parent() -> None:
    tree = drawn_tree()
    assert sorted(tree) == [cls.__name__ for cls in PUBLIC_ERRORS]
    for cls in PUBLIC_ERRORS:
        parents = [base for base in cls.__mro__[1:] if base in PUBLIC_ERRORS]
        if parents:
            assert tree[cls.__name__] > tree[parents[0].__name__], cls


@dataclass(frozen=True)
class NeverRegistered:
    n: int


@pytest.mark.anyio
async def test_a_replay_limit_out_of_range_raises_invalid_argument_error() -> None:
    bus = RedisEventBus(REDIS_URL)
    with pytest.raises(InvalidArgumentError, match="limit") as caught:
        await bus.replay([None], 0, 0)
    assert caught.value.argument == "limit"
    assert caught.value.value == 0


@pytest.mark.parametrize(
    "error",
    [
        DuplicateConnectionError("c-1"),
        UnregisteredEventError(NeverRegistered),
        InvalidArgumentError("limit", 0, "must be an int >= 1"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_run_time_errors_are_still_caught_as_value_errors(error: SseBusError) -> None:
    """They were ConfigurationErrors (ValueErrors) before: ``except ValueError`` still works."""
    assert isinstance(error, ValueError)
    assert isinstance(error, SseBusError)
