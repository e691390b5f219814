"""Benchmarks of moe_flan: `python -m benchmarks.run --suite cpu [--quick]` (see run.py)."""
