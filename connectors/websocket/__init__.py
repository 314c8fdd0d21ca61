"""WebSocket market-data gateway (``xchg ws serve``): protocol in ``docs/websocket-protocol.md``.

Pure core: ``book`` (L2 state from md.book, parts, gaps), ``checksum``, ``protocol`` (requests,
messages), ``limits`` (subscriptions, request rate, connections per address), ``sendqueue``
(bounded, coalesced), ``ticker``, ``marketstate`` (everything a worker knows), ``rest``,
``startup`` (where to start reading), ``partitioning``. Thin edges: ``reader`` (Kafka thread),
``server`` (asyncio), ``workers`` (SO_REUSEPORT processes).

Library choice: ``websockets`` 17.4 over ``picows`` 2.3.1.

- Measured here (``python -m connectors.websocket.bench 200 200``: one server process, 200 clients
  in another process, 127-byte frames, loopback, 2 shared cores): websockets 32,876 frames/s with
  one ``send`` per frame and 60,600 frames/s with a tick's frames coalesced into one write
  (``server.CoalescingConnection``); picows 3,357 / 3,441 frames/s in the same harness (an
  anomaly of this harness, likely small writes meeting delayed ACKs, not investigated further).
  The issue's own figures (1,000 clients, broadcast) were websockets 65-77k and picows 93-128k
  frames/s, with coalescing cutting the cost per frame about tenfold.
- Coalescing (which the gateway does anyway, one write per client per tick) removes most of the
  per-frame overhead where picows' advantage lies, while websockets gives what picows does not:
  plain HTTP on the same port (``process_request`` answers the REST fallback, ``/metrics`` and the
  static page before any upgrade), keepalive ping/pong with a timeout, ``max_size``, and it is a
  mature pure-Python-API library already in the environment.
"""
