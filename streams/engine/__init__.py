"""The matching engine: one pure, deterministic book and matcher per market.

Modules: ``book`` (levels and queues), ``matcher`` (``Engine``: commands → events), ``snapshot``
(canonical state encoding and hash), ``errors``. Nothing in this package reads a clock, draws
random numbers, logs or does I/O; ``streams/engine/ruff.toml`` bans those imports and
``tests/unit/engine/test_purity.py`` checks the same with the AST.
"""

from streams.engine.errors import InvariantBreach, SnapshotError
from streams.engine.matcher import Engine

__all__ = ["Engine", "InvariantBreach", "SnapshotError"]
