"""Topic namespaces: one deployment's physical topic names for the logical ones of the table.

Code names topics logically (``streams.serde.topics``: ``orders.commands``, ``trades`` ...); the
codec is keyed by those. A ``Namespace`` with a prefix maps them to physical Kafka topics
(``bench-1a2b.orders.commands``), so benchmarks and tests run beside a live pipeline on the same
cluster without touching its topics. The default namespace has no prefix.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Namespace:
    prefix: str = ""

    def __call__(self, logical: str) -> str:
        """The physical topic name of a logical one."""
        return self.prefix + logical

    def logical(self, physical: str) -> str:
        if not physical.startswith(self.prefix):
            raise ValueError(f"topic {physical!r} is not in namespace {self.prefix!r}")
        return physical[len(self.prefix):]


DEFAULT = Namespace()
