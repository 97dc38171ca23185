"""Benchmarks run by `make bench` (`python -m bench.run`); results go to docs/performance.md."""
