"""Expected failures become one red line and a non-zero exit, never a traceback (exit codes:
``streams.errors``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console

from streams.errors import EXIT_OPERATOR, OperatorError

err_console = Console(stderr=True, highlight=False)
T = TypeVar("T")

def fail(message: str, code: int = EXIT_OPERATOR) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", markup=True, soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def operator_errors() -> Iterator[None]:
    """Turn the project's operator errors into ``error: ...`` and their exit code (the
    convention is in ``streams.errors``)."""
    try:
        yield
    except OperatorError as error:
        raise fail(str(error), error.exit_code) from None


def guarded(func: Callable[..., T]) -> Callable[..., T]:
    import functools

    @functools.wraps(func)
    def wrapper(*args: object, **kwargs: object) -> T:
        with operator_errors():
            return func(*args, **kwargs)

    return wrapper
