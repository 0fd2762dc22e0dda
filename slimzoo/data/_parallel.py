"""How many processes data work gets: synthetic images drawn on every core (each image is a pure
function of (seed, index), so the order the workers finish in cannot change a byte of the dataset),
and the DataLoader's default worker count."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator


def usable_cpus() -> int:
    """CPUs this process may run on (the container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """DataLoader worker processes: none on machines with 2 or fewer CPUs, where a loader process takes
    CPU time from the two compute threads (training steps measured 10-18% slower with one worker on this
    2-core machine), else up to 4."""
    return max(0, min(4, usable_cpus() - 2))


def map_ordered(fn: Callable, jobs: Iterable, *, workers: int | None = None, chunksize: int = 32) -> Iterator:
    """``map(fn, jobs)`` over ``workers`` processes (default: every usable CPU), results in job order.

    ``fn`` must be a module-level function. One worker runs in this process (no pool, no start-up cost).
    """
    workers = usable_cpus() if workers is None else workers
    if workers <= 1:
        yield from map(fn, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork where there is one (as DataLoader workers do): the workers only draw with NumPy and PIL, and
    # spawn would re-import the caller's __main__, which fails for `python -` and notebooks
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method)) as pool:
        yield from pool.map(fn, jobs, chunksize=chunksize)
