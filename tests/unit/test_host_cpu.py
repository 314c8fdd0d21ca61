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


def _fake_readings(monkeypatch: pytest.MonkeyPatch, readings: list[CpuTimes]) -> threading.Event:
    """CpuTimes.read() serves ``readings`` in turn, then nothing new; the event is set once all
    have been served. The sampler reads every millisecond."""
    served = threading.Event()

    def source() -> Iterator[CpuTimes]:
        yield from readings
        served.set()
        while True:
            yield readings[-1]

    times = source()
    monkeypatch.setattr(CpuTimes, "read", classmethod(lambda cls: next(times)))
    monkeypatch.setattr(HostCpuSampler, "INTERVAL_S", 0.001)
    return served


def test_sampler_reports_the_whole_run_and_the_worst_second(monkeypatch: pytest.MonkeyPatch) -> None:
    served = _fake_readings(monkeypatch, [
        CpuTimes(busy=0, idle=0, steal=0),
        CpuTimes(busy=80, idle=20, steal=0),  # 80 % busy, no steal
        CpuTimes(busy=130, idle=30, steal=40),  # this second: 50 % busy, 40 % stolen
    ])
    sampler = HostCpuSampler()
    sampler.start()
    assert served.wait(10)
    sampler.stop()
    assert sampler.summary() == {"busy_pct": 65.0, "steal_pct": 20.0, "steal_pct_worst_second": 40.0}


def test_summary_of_a_window_uses_the_readings_that_cover_it() -> None:
    sampler = HostCpuSampler()
    sampler.readings = [
        (10.0, CpuTimes(busy=0, idle=0, steal=0)),
        (11.0, CpuTimes(busy=10, idle=90, steal=0)),  # idle second, before the window
        (12.0, CpuTimes(busy=100, idle=90, steal=10)),  # inside: 90 busy, 10 stolen
        (13.0, CpuTimes(busy=200, idle=90, steal=10)),  # inside: 100 busy
        (14.0, CpuTimes(busy=210, idle=180, steal=10)),  # idle second, after the window
    ]
    # 11.5..12.5 is covered by the readings at 11 and 13.
    assert sampler.summary(11.5, 12.5) == {"busy_pct": 95.0, "steal_pct": 5.0, "steal_pct_worst_second": 10.0}
    assert sampler.summary(11.0, 13.0) == {"busy_pct": 95.0, "steal_pct": 5.0, "steal_pct_worst_second": 10.0}
    assert sampler.summary()["busy_pct"] == 52.5  # type: ignore[index]


def test_sampler_stopped_within_a_second_reports_nothing() -> None:
    sampler = HostCpuSampler()
    sampler.start()
    sampler.stop()
    assert sampler.summary() is None
