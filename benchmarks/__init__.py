"""Benchmarks: each prints a JSON document and a table. Run as ``python -m benchmarks.NAME``."""

import os

# Before torch loads: spinning OpenMP threads collapse throughput when another process shares the
# cores (measured here: LoRA training 43 tokens/s spinning vs 174 passive under contention).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
