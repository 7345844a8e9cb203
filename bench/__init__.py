"""Benchmark harness for tokenpool (`make bench`); see docs/PERFORMANCE.md."""
