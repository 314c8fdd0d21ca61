"""WebSocket market-data gateway (``xchg ws serve``): protocol in ``docs/websocket-protocol.md``.

Pure core: ``book`` (L2 state from md.book, parts, gaps), ``checksum``, ``protocol`` (requests,
messages), ``limits`` (subscriptions, request rate, connections per address), ``sendqueue``
(bounded, coalesced), ``ticker``, ``marketstate`` (everything a worker knows), ``rest``,
``startup`` (where to start reading), ``partitioning``. Thin edges: ``reader`` (Kafka thread),
``server`` (asyncio), ``workers`` (SO_REUSEPORT processes).

Library choice: ``websockets`` 17.4 over ``picows`` 2.3.1, by measurement.

- A loopback comparison during development (one server process, 200 clients in another process,
  127-byte frames, 2 shared cores): websockets 32,876 frames/s with one ``send`` per frame and
  60,600 frames/s with a tick's frames coalesced into one write (``server.CoalescingConnection``);
  picows measured 3,357 / 3,441 frames/s in the same harness, an anomaly of that harness (small
  writes meeting delayed ACKs, likely), not a fair figure for picows, whose published broadcast
  figures are some 1.3-1.7x websockets'.
- Coalescing (the gateway writes once per client per tick anyway) removes most of the per-frame
  overhead where picows' advantage lies, while websockets gives what picows does not: plain HTTP
  on the same port (``process_request`` answers the REST fallback, ``/metrics`` and the static
  page before any upgrade), keepalive ping/pong with a timeout, ``max_size``, and a mature API.
- ``xchg bench ws`` measures the gateway against a bare websockets server making the same writes
  (figures: docs/performance.md).
"""
