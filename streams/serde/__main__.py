"""``python -m streams.serde [list|release]``: show the schema versions, or release the changed ones.

``list`` prints each top-level record with its fingerprint, released versions and whether its
current schema has unreleased changes; ``release`` writes ``schemas/history/<record>/v<N+1>.avsc``
for every record with unreleased changes (see ``schemas/README.md``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from streams.serde.catalog import SchemaCatalog, release


def main(argv: Sequence[str]) -> int:
    command = argv[0] if argv else "list"
    if command == "release":
        for path in release():
            print(f"wrote {path}")
        return 0
    if command == "list":
        catalog = SchemaCatalog.load()
        pending = set(catalog.unreleased())
        for name in catalog.top_level:
            cur = catalog.current(name)
            versions = ",".join(v.version for v in catalog.history(name)) or "-"
            flag = "  UNRELEASED CHANGES" if name in pending else ""
            print(f"{name:32} {cur.fingerprint_hex}  released: {versions}{flag}")
        return 0
    print("usage: python -m streams.serde [list|release]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
