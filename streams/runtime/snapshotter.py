"""Snapshots and state hashes for one partition.

Every snapshot publishes the per-market state hashes at its offset; between snapshots the engine
publishes hashes alone, more often (``hashes_only``: no snapshot record), so that a recovery,
which replays from the newest snapshot, crosses recorded hashes and checks its replay against
them.

Encoding a snapshot walks the whole state (every resting order and every order id the market has
used) and costs a pause proportional to it: hundreds of milliseconds for a busy market. Taken
inline it would stall every command behind it. ``BackgroundSnapshot`` therefore forks: the child
encodes the state as it was at the fork (a command boundary; copy-on-write memory) and sends the
finished records through a pipe, while the parent keeps matching. The parent produces them in
whichever transaction is open when they arrive; that transaction commits input offsets at or past
the snapshot's ``next_offset``, which is all recovery needs (it loads the newest snapshot whose
``next_offset`` does not pass the committed offset).

The child only computes and writes to the pipe, then ``os._exit``s: it touches no Kafka client,
runs no atexit handler and flushes no inherited buffer. It dies with the engine: a SIGKILLed
engine must not leave an encoder running beside its successor's recovery (on Linux the kernel
kills the child when the parent dies; elsewhere the child notices at its write to the pipe).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pickle
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass

from streams.runtime.partition import PartitionState
from streams.serde.codec import Codec
from streams.serde.topics import ENGINE_HASHES, ENGINE_SNAPSHOTS

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_signal() -> Callable[[int, int], int] | None:
    # Looked up in the parent: a child forked from a threaded process must not load libraries.
    if not sys.platform.startswith("linux"):
        return None
    prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    return prctl


_PRCTL = _parent_death_signal()


def die_with_parent(parent: int) -> None:
    """In a forked child: be SIGKILLed when ``parent`` dies (Linux), and exit now if it already
    has (it died between the fork and this call: the child was re-parented). Linux sends the
    signal when the *thread* that forked ends: the engine forks from its main thread."""
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


@dataclass(frozen=True)
class SnapshotRecords:
    """Encoded values ready to produce: the snapshot (key = partition; None for a hash-only
    checkpoint) and one hash per market, each at input offset ``next_offset - 1``."""

    partition: int
    next_offset: int
    snapshot: bytes | None
    hashes: list[tuple[bytes, bytes]]  # (market key, StateHash value)


def _hash_records(codec: Codec, state: PartitionState, markets: list[tuple[str, int, str]]) -> list[tuple[bytes, bytes]]:
    return [(market.encode(), codec.encode(ENGINE_HASHES, {
        "market": market, "seq": seq, "input_offset": state.next_offset - 1, "state_hash": state_hash}))
        for market, seq, state_hash in markets]


def encode_snapshot(state: PartitionState, codec: Codec) -> SnapshotRecords:
    """The snapshot of ``state`` now, with the per-market hashes it computed on the way."""
    record = state.snapshot_record()
    hashes = _hash_records(codec, state, [(m["market"], m["seq"], m["state_hash"]) for m in record["markets"]])
    return SnapshotRecords(state.partition, state.next_offset, codec.encode(ENGINE_SNAPSHOTS, record), hashes)


def encode_hashes(state: PartitionState, codec: Codec) -> SnapshotRecords:
    """The per-market state hashes of ``state`` now, without a snapshot (a hash checkpoint)."""
    hashes = _hash_records(codec, state, [(market, engine.seq, engine.state_hash())
                                          for market, engine in sorted(state.engines.items())])
    return SnapshotRecords(state.partition, state.next_offset, None, hashes)


class BackgroundSnapshot:
    """A snapshot (or, ``hashes_only``, a hash checkpoint) being encoded by a forked child;
    ``poll()`` returns it once complete."""

    def __init__(self, state: PartitionState, codec: Codec, hashes_only: bool = False) -> None:
        encode = encode_hashes if hashes_only else encode_snapshot
        read_fd, write_fd = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: encode, write, exit without running any parent cleanup
            code = 0
            try:
                die_with_parent(parent)
                os.close(read_fd)
                payload = pickle.dumps(encode(state, codec), protocol=pickle.HIGHEST_PROTOCOL)
                view = memoryview(payload)
                while view:
                    view = view[os.write(write_fd, view):]
            except BaseException:  # the child reports failure by its exit status only
                code = 1
            finally:
                os._exit(code)
        os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.pid, self.fd = pid, read_fd
        self.chunks: list[bytes] = []
        self.next_offset = state.next_offset

    def poll(self) -> SnapshotRecords | None:
        """The records once the child has finished; None while it is still working.
        Raises ``RuntimeError`` if the child failed (the caller simply takes another one later)."""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 20)
            except OSError as error:
                if error.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    return None
                raise
            if not chunk:
                break
            self.chunks.append(chunk)
        os.close(self.fd)
        _, status = os.waitpid(self.pid, 0)
        if status != 0 or not self.chunks:
            raise RuntimeError(f"snapshot child {self.pid} failed (status {status})")
        records: SnapshotRecords = pickle.loads(b"".join(self.chunks))
        return records

    def cancel(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
