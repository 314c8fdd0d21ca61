"""Expected failures become one red line and a non-zero exit, never a traceback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console

err_console = Console(stderr=True, highlight=False)
T = TypeVar("T")

# Exception types whose message is written for the operator. Imported lazily by name to keep the
# CLI's start-up light.
_OPERATOR_ERRORS = (
    "streams.settings:SettingsError",
    "streams.services.errors:ServiceError",
    "streams.markets:RegistryError",
    "streams.runtime.topic_admin:TopicFileError",
    "connectors.timescale.migrations:MigrationError",
    "connectors.settlement.errors:SettlementError",
    "connectors.timescale.errors:SinkError",
    # Why a stream process stops (a fenced static member, a state whose hash disagrees, input
    # deleted by retention, outputs the broker refuses): stated once, exit non-zero.
    "streams.runtime.failures:ClientFatal",
    "streams.runtime.failures:StateMismatch",
    "streams.runtime.failures:RecoveryError",
    "streams.runtime.failures:OutputRefused",
)


def _operator_error_types() -> tuple[type[BaseException], ...]:
    import importlib

    types = []
    for dotted in _OPERATOR_ERRORS:
        module, name = dotted.split(":")
        types.append(getattr(importlib.import_module(module), name))
    return tuple(types)


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def operator_errors() -> Iterator[None]:
    """Turn the project's operator-facing exceptions into ``error: ...`` and exit code 1."""
    types = _operator_error_types()
    try:
        yield
    except types as error:
        raise fail(str(error)) from None


def guarded(func: Callable[..., T]) -> Callable[..., T]:
    import functools

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> T:
        with operator_errors():
            return func(*args, **kwargs)

    return wrapper
