"""The benchmark host's CPU while a figure is measured, from ``/proc/stat``.

On a virtual machine the hypervisor can take the cores away (*steal* time) for seconds at a
time; a latency figure measured then says more about the neighbours than about the pipeline.
The pipeline benchmark therefore reports, next to its throughput and its latency percentiles,
how busy the cores were and how much was stolen (the mean and the worst second), so a reader can
tell the two apart.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTimes:
    """Cumulative jiffies of all cores: ``busy`` (user, nice, system, irq, softirq), ``idle``
    (idle, iowait) and ``steal``. Guest time is already inside user time and is not added."""

    busy: int
    idle: int
    steal: int

    @classmethod
    def parse(cls, line: str) -> CpuTimes:
        """From the aggregate ``cpu`` line of ``/proc/stat``."""
        name, *fields = line.split()
        if name != "cpu" or len(fields) < 8:
            raise ValueError(f"not the aggregate cpu line of /proc/stat: {line!r}")
        user, nice, system, idle, iowait, irq, softirq, steal = (int(f) for f in fields[:8])
        return cls(busy=user + nice + system + irq + softirq, idle=idle + iowait, steal=steal)

    @classmethod
    def read(cls) -> CpuTimes | None:
        """Now, or None where there is no ``/proc/stat`` (not Linux)."""
        try:
            with PROC_STAT.open() as stat:
                return cls.parse(stat.readline())
        except (OSError, ValueError):
            return None


@dataclass(frozen=True)
class CpuShare:
    """Shares of all cores' time over an interval, in percent."""

    busy_pct: float
    steal_pct: float

    @classmethod
    def between(cls, before: CpuTimes, after: CpuTimes) -> CpuShare:
        busy, idle, steal = after.busy - before.busy, after.idle - before.idle, after.steal - before.steal
        total = busy + idle + steal
        if total <= 0:
            return cls(0.0, 0.0)
        return cls(round(100 * busy / total, 1), round(100 * steal / total, 1))


class HostCpuSampler(threading.Thread):
    """Reads the host's CPU times once a second until ``stop()``; ``summary()`` gives the shares
    over the run (or over a window of it) and the steal of its worst second."""

    INTERVAL_S = 1.0

    def __init__(self) -> None:
        super().__init__(daemon=True, name="host-cpu")
        self.readings: list[tuple[float, CpuTimes]] = []  # (time.monotonic(), times)
        self._stop_flag = threading.Event()

    def run(self) -> None:
        while True:
            now = CpuTimes.read()
            if now is None:
                return
            self.readings.append((time.monotonic(), now))
            if self._stop_flag.wait(self.INTERVAL_S):
                return

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5)

    def summary(self, since: float | None = None, until: float | None = None) -> dict[str, float] | None:
        """The readings covering ``since``..``until`` (monotonic times; default: all), summarised:
        None if fewer than two cover it (no ``/proc/stat``, or stopped within a second)."""
        times = [t for t, _ in self.readings]
        # From the last reading at or before ``since`` to the first at or after ``until``.
        first = max(bisect.bisect_right(times, since) - 1, 0) if since is not None else 0
        last = bisect.bisect_left(times, until) if until is not None else len(times) - 1
        window = [cpu for _, cpu in self.readings[first:last + 1]]
        if len(window) < 2:
            return None
        whole = CpuShare.between(window[0], window[-1])
        return {
            "busy_pct": whole.busy_pct,
            "steal_pct": whole.steal_pct,
            "steal_pct_worst_second": max(CpuShare.between(a, b).steal_pct for a, b in itertools.pairwise(window)),
        }
