"""``xchg ws serve --workers N``: N worker processes sharing one port with ``SO_REUSEPORT``.

The parent forks the workers before it creates any Kafka client or event loop (librdkafka and
asyncio are not fork-safe), then supervises: a worker that dies is started again (the kernel
spreads new connections over the live listeners meanwhile); SIGTERM/SIGINT stop them all.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from streams.observability import get_logger

log = get_logger("ws.workers")
RESTART_BACKOFF_S = 1.0


def _spawn(index: int, work: Callable[[int], None]) -> int:
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            work(index)
        except BaseException as error:
            log.error("worker failed", worker=index, error=str(error))
            code = 3
        finally:
            os._exit(code)
    return pid


def supervise(workers: int, work: Callable[[int], None]) -> int:
    """Run ``work(index)`` in ``workers`` child processes until a stop signal; returns the exit code."""
    if workers == 1:
        work(0)
        return 0
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue

    children: dict[int, int] = {}
    for index in range(workers):
        children[_spawn(index, work)] = index
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, -1)
        if index < 0:
            continue
        if not stopping:
            log.warning("worker exited; starting it again", worker=index, pid=pid, status=status)
            time.sleep(RESTART_BACKOFF_S)
            children[_spawn(index, work)] = index
    return 0
