"""Operator-facing settlement errors (one line, printed by ``streams.cli.errors.guarded``)."""

from __future__ import annotations

from streams.errors import OperatorError


class SettlementError(OperatorError, RuntimeError):
    """Settlement cannot proceed; the message names the cause and the fix."""
