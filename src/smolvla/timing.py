"""Wall-clock timing that is honest on a GPU: the device is synchronized before each clock read.

CUDA kernels run asynchronously, so timing a call without a synchronize measures only the launch. Every latency
smolvla reports (`smolvla bench`, reflow's chunk latency) goes through `timed`.
"""

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued work on `device` (a no-op on a CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], reps: int, device: torch.device | str, warmup: int = 0) -> tuple[float, float]:
    """(first call, median of `reps` later calls) in seconds; `warmup` untimed calls run in between.

    The first call is reported apart because it includes compilation, allocation and cache warm-up.
    """
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)
