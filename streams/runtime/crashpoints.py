"""Named crash points for crash tests: ``XCHG_CRASH_POINT=name[:n]`` SIGKILLs this process the
n-th time (default 1st) execution reaches ``crash_point(name)``. Unset, a call costs one dict
lookup. Points in use: ``after-produce`` (outputs produced, transaction not committed),
``during-snapshot`` (snapshot record produced, transaction not committed), ``after-commit``.
"""

from __future__ import annotations

import os
import signal

_armed: dict[str, int] = {}
_spec = os.environ.get("XCHG_CRASH_POINT", "")
if _spec:
    name, _, count = _spec.partition(":")
    _armed[name] = int(count or "1")


def crash_point(name: str) -> None:
    remaining = _armed.get(name)
    if remaining is None:
        return
    if remaining <= 1:
        os.kill(os.getpid(), signal.SIGKILL)
    _armed[name] = remaining - 1
