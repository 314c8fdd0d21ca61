"""The one error type of the service launchers: a single actionable line for the operator."""

from __future__ import annotations

from streams.errors import OperatorError


class ServiceError(OperatorError, RuntimeError):
    """A service could not be prepared, started or reached. ``str()`` is one line with the fix."""
