"""`dap-hvd bench`: the benchmark suite (suite.py), one module per BENCHMARKS.md section."""

from dap_hvd.bench.suite import main

__all__ = ["main"]
