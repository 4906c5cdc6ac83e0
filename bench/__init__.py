"""Benchmarks: each prints one JSON line per figure (see bench/README.md)."""
