"""Benchmarks: each prints a JSON document and a table. Run as ``python -m benchmarks.NAME``."""
