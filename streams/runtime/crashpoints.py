"""Named crash points for crash tests: ``XCHG_CRASH_POINT=name[:n]`` SIGKILLs this process the
n-th time (default 1st) execution reaches ``crash_point(name)``. Unset, a call costs one dict
lookup. Points in use: ``after-produce`` (outputs produced, transaction not committed),
``during-snapshot`` (snapshot record produced, transaction not committed), ``after-commit``.
Fault points (``XCHG_FAULT_POINT``, ``fault_point``) raise instead of killing: for the error
paths a process must take on its own.
"""

from __future__ import annotations

import os
import signal

_armed: dict[str, int] = {}
_spec = os.environ.get("XCHG_CRASH_POINT", "")
if _spec:
    name, _, count = _spec.partition(":")
    _armed[name] = int(count or "1")


class InjectedFault(RuntimeError):
    """Raised at a fault point armed by ``XCHG_FAULT_POINT=name[:n]`` (tests of error paths)."""


_faults: dict[str, int] = {}
_fault_spec = os.environ.get("XCHG_FAULT_POINT", "")
if _fault_spec:
    fault_name, _, fault_count = _fault_spec.partition(":")
    _faults[fault_name] = int(fault_count or "1")


def fault_point(name: str) -> None:
    """Raise ``InjectedFault`` the n-th time execution reaches this point (armed by
    ``XCHG_FAULT_POINT``): how a test makes a component fail where no input could. Unset, a
    call costs one dict lookup. Points in use: ``candle-fold`` (the market-data agent)."""
    remaining = _faults.get(name)
    if remaining is None:
        return
    if remaining <= 1:
        raise InjectedFault(f"injected fault at {name}")
    _faults[name] = remaining - 1


def crash_point(name: str) -> None:
    remaining = _armed.get(name)
    if remaining is None:
        return
    if remaining <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _armed[name] = remaining - 1
