"""The benchmark host's CPU while a figure is measured, from ``/proc/stat``.

On a virtual machine the hypervisor can take the cores away (*steal* time) for seconds at a
time; a latency figure measured then says more about the neighbours than about the pipeline.
The latency benchmark therefore reports, next to its percentiles, how busy the cores were and
how much was stolen (the mean and the worst second), so a reader can tell the two apart.
"""

from __future__ import annotations

import threading
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
    """Samples the host's CPU split once a second until ``stop()``, which gives the shares over
    the whole run and the steal of its worst second."""

    INTERVAL_S = 1.0

    def __init__(self) -> None:
        super().__init__(daemon=True, name="host-cpu")
        self.intervals: list[CpuShare] = []
        self.first: CpuTimes | None = None
        self.last: CpuTimes | None = None
        self._stop_flag = threading.Event()

    def run(self) -> None:
        self.first = previous = CpuTimes.read()
        if previous is None:
            return
        while not self._stop_flag.wait(self.INTERVAL_S):
            now = CpuTimes.read()
            if now is None:
                return
            self.intervals.append(CpuShare.between(previous, now))
            self.last, previous = now, now

    def stop(self) -> dict[str, float] | None:
        """Stop sampling; None if nothing could be read (no ``/proc/stat``) or no interval ended."""
        self._stop_flag.set()
        self.join(5)
        if self.first is None or self.last is None or not self.intervals:
            return None
        whole = CpuShare.between(self.first, self.last)
        return {
            "busy_pct": whole.busy_pct,
            "steal_pct": whole.steal_pct,
            "steal_pct_worst_second": max(share.steal_pct for share in self.intervals),
        }
