"""How many CPU threads torch uses, and how its threads wait for each other.

``import napari_tomoseg`` -> :func:`set_openmp_waiting` (environment, before torch loads OpenMP)
front end (``--threads``, the widgets' "CPU threads") -> :func:`configure_threads` -> torch's count
:func:`default_threads`: the CPUs this process may use (affinity, cgroup quota) and that are idle now,
capped by torch's own.

Why the waiting matters: torch's CPU kernels split each operation evenly over its threads and wait
for the last one. When another program is busy on one core, the torch thread sharing that core runs
only part of the time while the others, by default, spin on their cores waiting for it, so a
segmentation could take ten times as long. Torch's CPU builds use GNU OpenMP (libgomp); with a short
spin (:data:`OPENMP_WAITING`) a waiting thread soon sleeps and frees its core, where the scheduler
can run the late thread. ``benchmarks/inference.py --busy-neighbour`` measures it.

Imports no torch at module level: :func:`set_openmp_waiting` must run before torch is imported.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

__all__ = [
    "OPENMP_WAITING",
    "USER_OPENMP_SETTINGS",
    "available_cpus",
    "configure_threads",
    "default_threads",
    "idle_cpus",
    "set_openmp_waiting",
]

log = logging.getLogger(__name__)

#: The OpenMP waiting policy set before torch loads, unless the user chose one. libgomp's default
#: spins 300000 times (a few hundred µs) before sleeping; 10000 (about 10 µs) keeps quick hand-overs
#: between a network's layers spinning and lets a thread waiting for a descheduled one sleep.
OPENMP_WAITING: dict[str, str] = {"GOMP_SPINCOUNT": "10000"}

#: Variables through which a user chooses an OpenMP waiting policy; when any is set, none of
#: :data:`OPENMP_WAITING` is.
USER_OPENMP_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

#: Variables that fix torch's own thread count; when any is set, :func:`default_threads` keeps it.
_USER_THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

_torch_default: int | None = None


def set_openmp_waiting(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`OPENMP_WAITING` in ``environ`` (``os.environ``) unless the user set a policy.

    Takes effect only when it runs before torch loads its OpenMP runtime, which is why importing
    ``napari_tomoseg`` calls it; child processes (dask workers) inherit it.

    Parameters
    ----------
    environ
        The environment to change; ``os.environ`` when None.

    Returns
    -------
    dict
        The variables set (empty when any of :data:`USER_OPENMP_SETTINGS` is already set).
    """
    env = os.environ if environ is None else environ
    if any(name in env for name in USER_OPENMP_SETTINGS):
        return {}
    if environ is None and "torch" in sys.modules:
        log.debug("torch was imported before napari_tomoseg: its OpenMP waiting stays as it was")
    env.update(OPENMP_WAITING)
    return dict(OPENMP_WAITING)


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, cut to a cgroup CPU quota (containers
    started with ``--cpus``); at least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


def _cgroup_quota() -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota, or None."""
    try:
        parts = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if len(parts) == 2 and parts[0] != "max":
            return int(parts[0]) / int(parts[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def idle_cpus(seconds: float = 0.1) -> float | None:
    """How many of the machine's CPUs no process used over the next ``seconds`` (``/proc/stat``),
    or None where that cannot be read."""
    import time

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, everything

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / (total1 - total0)


def default_threads() -> int:
    """Torch's thread count when the user gives none.

    Torch's own choice (its physical cores, or ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``), cut to
    :func:`available_cpus` unless one of those variables was set: torch counts every core of the
    machine even when the process may use only a few, and threads beyond the usable cores wait for
    each other on shared cores. Then cut to the cores idle right now (:func:`idle_cpus`, rounded,
    at least 1): torch splits every operation evenly over its threads, so a thread sharing its core
    with a busy program makes every operation wait for it; on two cores with one taken, one thread
    is faster than two.
    """
    import torch

    global _torch_default
    if _torch_default is None:
        _torch_default = int(torch.get_num_threads())
    if any(name in os.environ for name in _USER_THREAD_SETTINGS):
        return _torch_default
    n = max(1, min(_torch_default, available_cpus()))
    idle = idle_cpus()
    if idle is not None:
        n = max(1, min(n, math.floor(idle + 0.5)))
    return n


def configure_threads(threads: int | None = None) -> int:
    """Let torch compute on ``threads`` CPU threads (None: :func:`default_threads`); returns the count.

    Call it in the thread that then runs torch: the count is process-wide for threads that start
    computing afterwards, but under OpenMP a thread that has already computed keeps its own count
    until it calls this again. The widgets' jobs call it at their start, so the latest job's choice
    holds for it and for later jobs while a job already running keeps the count it started with.

    Raises
    ------
    ValueError
        If ``threads`` is not a whole number of at least 1.
    """
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be a whole number of at least 1, got {threads!r}")
    n = default_threads() if threads is None else threads
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return int(torch.get_num_threads())
