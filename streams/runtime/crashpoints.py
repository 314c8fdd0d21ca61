"""Named crash and fault points for tests of the failure paths, armed by settings:
``EXCHANGE_CRASH_POINT=name[:n]`` SIGKILLs this process the n-th time (default 1st) execution
reaches ``crash_point(name)``; ``EXCHANGE_FAULT_POINT=name[:n]`` raises ``InjectedFault`` at
``fault_point(name)`` instead (a failure the process must handle on its own). Disarmed, a call
costs one dict lookup.

Crash points in use: ``after-produce`` (outputs produced, transaction not committed),
``during-snapshot`` (snapshot record produced, transaction not committed), ``after-commit``, and
the submitter's (``connectors/settlement``). Fault points: ``candle-fold`` (the candle agent),
``ticker-fold`` (the ticker agent).
"""

from __future__ import annotations

import os
import signal


class InjectedFault(RuntimeError):
    """Raised at an armed fault point."""


def _parse(spec: str) -> dict[str, int]:
    if not spec:
        return {}
    name, _, count = spec.partition(":")
    return {name: int(count or "1")}


_armed: dict[str, dict[str, int]] = {}


def _points(kind: str) -> dict[str, int]:
    points = _armed.get(kind)
    if points is None:
        from streams.settings import load_settings

        settings = load_settings()
        _armed["crash"] = _parse(settings.crash_point)
        _armed["fault"] = _parse(settings.fault_point)
        points = _armed[kind]
    return points


def _reached(kind: str, name: str) -> bool:
    """Count one pass through the point; True on the pass it is armed for."""
    points = _points(kind)
    remaining = points.get(name)
    if remaining is None:
        return False
    if remaining <= 1:
        del points[name]
        return True
    points[name] = remaining - 1
    return False


def fault_point(name: str) -> None:
    """Raise ``InjectedFault`` the n-th time execution reaches this point (when armed)."""
    if _reached("fault", name):
        raise InjectedFault(f"injected fault at {name}")


def crash_point(name: str) -> None:
    """SIGKILL this process the n-th time execution reaches this point (when armed)."""
    if _reached("crash", name):
        os.kill(os.getpid(), signal.SIGKILL)
