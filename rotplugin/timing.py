"""Wall-clock medians for the benchmarks (standard library only)."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Tuple

__all__ = ["median_time"]


def median_time(fn: Callable[[], Any], repeat: int, warmup: int = 0) -> Tuple[float, Any]:
    """``(median seconds of `repeat` calls of fn, the last call's result)``, after ``warmup`` untimed calls."""
    if repeat < 1:
        raise ValueError(f"repeat must be at least 1, got {repeat}")
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
