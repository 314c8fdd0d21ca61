"""The collector settings of the stream processes and the load generator."""

from __future__ import annotations

import gc

import pytest

from streams.runtime.collector import paused


@pytest.mark.parametrize("enabled_before", [True, False])
def test_paused_disables_collection_and_restores_the_previous_state(enabled_before: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled_before else gc.disable)()
        with paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled_before
    finally:
        (gc.enable if was else gc.disable)()


def test_paused_restores_collection_when_the_block_raises() -> None:
    gc.enable()
    with pytest.raises(RuntimeError), paused():
        raise RuntimeError("boom")
    assert gc.isenabled()
