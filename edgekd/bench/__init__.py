"""Benchmarking: the device-side runner, statistics, the host harness, results and the report.

Calling the package, `edgekd.bench(artifacts, device="host", ...)`, benchmarks artifacts
(edgekd.bench.harness.bench).
"""

from edgekd import _make_callable

_make_callable(__name__, "edgekd.bench.harness:bench")
