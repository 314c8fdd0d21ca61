"""Benchmarks (workload generation and timing live here, outside the pure engine)."""
