"""Offline tools around the engine: conformance scenarios and command-log replay (they do I/O)."""
