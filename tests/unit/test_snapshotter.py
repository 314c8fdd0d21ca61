"""The forked snapshot encoder (streams/runtime/snapshotter.py): same records as inline, and no
encoder outlives a SIGKILLed engine."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap

import pytest

from streams.loadgen import OrderFlow, encode_flow
from streams.markets import MarketRegistry
from streams.runtime.partition import PartitionState
from streams.runtime.snapshotter import BackgroundSnapshot, encode_snapshot
from streams.serde.codec import Codec
from streams.settings import load_settings


def test_background_snapshot_equals_the_inline_one() -> None:
    registry = MarketRegistry.load(load_settings().markets_file)
    codec = Codec()
    state = PartitionState(0, registry, codec)
    flow = OrderFlow([m.spec() for m in registry], seed=7)
    for offset, (_, _, value) in enumerate(encode_flow(flow, codec, 2000)):
        state.process(offset, value, 1_700_000_000_000 + offset)
    background = BackgroundSnapshot(state, codec)
    ready = None
    while ready is None:
        readable, _, _ = select.select([background.fd], [], [], 30)
        assert readable, "the snapshot child wrote nothing for 30 s"
        ready = background.poll()
    assert ready == encode_snapshot(state, codec)
    assert ready.next_offset == 2000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_the_encoder_child_dies_with_its_parent() -> None:
    # A parent forks a child that arms die_with_parent and then waits forever; SIGKILL the parent.
    script = textwrap.dedent("""
        import os, signal, sys
        from streams.runtime.snapshotter import die_with_parent
        parent = os.getpid()
        if os.fork() == 0:
            die_with_parent(parent)
            print(os.getpid(), flush=True)
            signal.pause()
            os._exit(0)
        signal.pause()
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        child_fd = os.pidfd_open(child)  # readable once the child has exited
    finally:
        parent.kill()
        parent.wait(10)
    try:
        readable, _, _ = select.select([child_fd], [], [], 10)
        assert readable, "the child outlived its SIGKILLed parent"
    finally:
        os.close(child_fd)
        if not readable:
            os.kill(child, signal.SIGKILL)
