"""The bounded send queue of one connection, coalesced into one write per tick.

Frames are queued as encoded bytes (one text message each) with the channel they belong to (for
the metrics) and, for trades, the trade's commit time (for the latency histogram). ``take``
hands the writer everything pending at once: the writer frames all of it into one socket write.

Invariant: ``pending_bytes`` is the sum of the sizes of the queued frames and never exceeds
``max_bytes``; a push that would exceed it is refused (``push`` returns False) and the queue is
then *overflowed*: the connection is a slow consumer and must be closed (4008); nothing is
queued on it after that. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    channel: str
    trade_ts: int | None = None  # ms: the trade's record time, for trade frames


class SendQueue:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.frames: list[Frame] = []
        self.pending_bytes = 0
        self.overflowed = False

    def push(self, frame: Frame) -> bool:
        if self.overflowed:
            return False
        size = len(frame.data)
        if self.pending_bytes + size > self.max_bytes:
            self.overflowed = True
            self.frames.clear()
            self.pending_bytes = 0
            return False
        self.frames.append(frame)
        self.pending_bytes += size
        return True

    def take(self) -> list[Frame]:
        """Everything pending, oldest first; the queue is empty afterwards."""
        frames, self.frames, self.pending_bytes = self.frames, [], 0
        return frames

    def __len__(self) -> int:
        return len(self.frames)
