"""Wall-clock timing of jitted calls, shared by the benchmarks."""

from __future__ import annotations

import statistics
import time

import jax


def median_seconds(fn, *args, repeats: int) -> float:
    """Median seconds of ``fn(*args)`` over ``repeats`` runs, after one compile-and-warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)
