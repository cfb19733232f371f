"""Helpers shared by the inference, memory and dask benchmarks (not a public API).

Each benchmark prints human-readable progress to stderr and, as its last stdout line, one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    """Print ``result`` as the last line of stdout (the benchmark interface)."""
    print(json.dumps(result, default=_jsonable))


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def machine() -> dict[str, Any]:
    import torch

    from napari_tomoseg.core.segment import cpu_has_native_bf16

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def matmul_peak(dtype: Any, n: int = 1024, seconds: float = 1.5) -> float:
    """Best FLOP/s of an n x n matmul within ``seconds``: the machine's practical peak right now."""
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def flops_per_voxel(network: Any, shape: tuple[int, ...]) -> float:
    """Forward FLOPs per output voxel, counted by torch's flop counter on one input of ``shape``."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(shape)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(x)
    return counter.get_total_flops() / float(np.prod(shape[2:]))


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB (Linux reports KiB)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * 1024 / 1e9


def phantom(shape: tuple[int, int, int], seed: int = 11) -> Any:
    """A synthetic composite (volume + ground truth) of ``shape``, seed never used in training."""
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom

    return make_phantom(PhantomConfig(shape=shape), seed=seed)


def tiled_zarr(path: Path, n_slices: int, *, block: Any, chunks: tuple[int, int, int]) -> None:
    """Write a uint8 zarr volume of ``n_slices`` by repeating ``block`` (z, y, x) along z."""
    import zarr

    shape = (n_slices, *block.shape[1:])
    arr = zarr.create_array(store=str(path), shape=shape, dtype=block.dtype, chunks=chunks)
    depth = block.shape[0]
    for z0 in range(0, n_slices, depth):
        z1 = min(n_slices, z0 + depth)
        arr[z0:z1] = block[: z1 - z0]
