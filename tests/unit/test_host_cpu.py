"""The latency benchmark's host CPU accounting (streams/bench/host.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.bench import host
from streams.bench.host import CpuShare, CpuTimes, HostCpuSampler


def test_parse_splits_busy_idle_and_steal() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    times = CpuTimes.parse("cpu  100 5 20 300 7 1 2 40 9 0\n")
    assert times == CpuTimes(busy=100 + 5 + 20 + 1 + 2, idle=300 + 7, steal=40)


@pytest.mark.parametrize("line", ["cpu0 1 2 3 4 5 6 7 8", "cpu 1 2 3", "intr 1 2 3 4 5 6 7 8 9", ""])
def test_parse_rejects_other_lines(line: str) -> None:
    with pytest.raises(ValueError):
        CpuTimes.parse(line)


def test_share_between_two_readings() -> None:
    share = CpuShare.between(CpuTimes(busy=100, idle=100, steal=0), CpuTimes(busy=250, idle=130, steal=20))
    assert share == CpuShare(busy_pct=75.0, steal_pct=10.0)
    assert CpuShare.between(CpuTimes(1, 1, 1), CpuTimes(1, 1, 1)) == CpuShare(0.0, 0.0)


def test_read_is_none_without_proc_stat(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(host, "PROC_STAT", tmp_path / "missing")
    assert CpuTimes.read() is None


def test_sampler_reports_the_whole_run_and_the_worst_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = [
        CpuTimes(busy=0, idle=0, steal=0),
        CpuTimes(busy=80, idle=20, steal=0),  # 80 % busy, no steal
        CpuTimes(busy=130, idle=30, steal=40),  # this interval: 50 % busy, 40 % stolen
    ]
    served = threading.Event()

    def fake_read() -> Iterator[CpuTimes]:
        yield from readings
        served.set()
        while True:
            yield readings[-1]  # nothing happens after the last reading: a zero interval

    source = fake_read()
    monkeypatch.setattr(CpuTimes, "read", classmethod(lambda cls: next(source)))
    monkeypatch.setattr(HostCpuSampler, "INTERVAL_S", 0.001)
    sampler = HostCpuSampler()
    sampler.start()
    assert served.wait(10)
    summary = sampler.stop()
    assert summary == {"busy_pct": 65.0, "steal_pct": 20.0, "steal_pct_worst_second": 40.0}


def test_sampler_stopped_before_an_interval_reports_nothing() -> None:
    sampler = HostCpuSampler()
    sampler.start()
    assert sampler.stop() is None
