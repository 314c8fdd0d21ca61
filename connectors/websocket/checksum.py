"""The book checksum of the protocol (``docs/websocket-protocol.md``, "Checksum string").

CRC-32 (``zlib.crc32``) of the best 10 asks in ascending price order, then the best 10 bids in
descending price order, each level written as the decimal price followed by the decimal qty,
with no separators. Integers only: the string is exact and the same in every language.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

CHECKSUM_LEVELS = 10


def checksum_string(bids_best_first: Sequence[tuple[int, int]], asks_best_first: Sequence[tuple[int, int]]) -> str:
    """The string the checksum is taken of; only the first 10 levels of each side count."""
    parts = [f"{price}{qty}" for price, qty in asks_best_first[:CHECKSUM_LEVELS]]
    parts.extend(f"{price}{qty}" for price, qty in bids_best_first[:CHECKSUM_LEVELS])
    return "".join(parts)


def book_checksum(bids_best_first: Sequence[tuple[int, int]], asks_best_first: Sequence[tuple[int, int]]) -> int:
    """Unsigned 32-bit CRC-32 of :func:`checksum_string`."""
    return zlib.crc32(checksum_string(bids_best_first, asks_best_first).encode("ascii"))
