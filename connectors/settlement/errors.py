"""Operator-facing settlement errors (one line, printed by ``streams.cli.errors.guarded``)."""

from __future__ import annotations


class SettlementError(RuntimeError):
    """Settlement cannot proceed; the message names the cause and the fix."""
