"""The same 2D / 2.5D / multi-axis inference on a dask.distributed cluster, voxel for voxel identical.

input (zarr, HDF5, TIFF on storage every worker sees) --> slabs of slices along the slicing axis,
one task each (the task reads its slab plus the 2.5D neighbours, its halo, straight from the
store) --> the model, scattered once to every worker, segments it exactly as
:func:`~napari_tomoseg.core.segment.iter_segment` would --> labels written into the output zarr
store (a temporary name, renamed when every block is done) --> per-phase voxel counts back.

Why identical: the grey range is computed once on the client from the same subsample, each slab is
read with the same mirror padding at the volume's edges only, tiles sit on a grid anchored to the
volume, and every batch has the same number of tiles, so a tile's labels depend on nothing that
the chunking changes (the multi-axis mode's y and x passes read their z-context through the same
volume-anchored z-grid). Why not ``map_overlap``: the halo of a slab is only along the slicing axis
and is read from the store directly, which also keeps the mirror padding at the volume edges
(dask's ``boundary`` options differ from numpy's ``reflect`` in the corner cases).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg.core import io
from napari_tomoseg.core.checks import finite_checked
from napari_tomoseg.core.model import TomosegModel
from napari_tomoseg.core.progress import Cancelled, CancelToken, SegmentProgress, run_to_completion
from napari_tomoseg.core.segment.device import precision_name, resolve_device, resolve_precision
from napari_tomoseg.core.segment.options import InferenceConfig, ResolvedInference, resolve
from napari_tomoseg.core.segment.pipeline import Segmenter, SegmentPlan
from napari_tomoseg.core.segment.strategies import output_chunks

log = logging.getLogger(__name__)

#: Per worker process: model key -> Segmenter, path -> opened volume, and the plan over it (built
#: once, reused by the tasks).
_WORKER_CACHE: dict[tuple[Any, ...], Any] = {}


@dataclass
class DistributedResult:
    """What :func:`segment_distributed` returns."""

    counts: np.ndarray  # voxels per label 0..C
    seconds: float
    precision: str
    mode: str
    block: int
    batch_size: int
    n_workers: int
    grey_range: tuple[float, float]


def connect(
    *, scheduler: str | None = None, local_cluster: int | None = None, timeout: float = 10.0
) -> tuple[Any, Any]:
    """A ``(client, cluster)`` pair: a client of ``scheduler``, or of a new LocalCluster.

    Raises
    ------
    ImportError
        If ``distributed`` is not installed.
    ValueError
        If the scheduler cannot be reached within ``timeout`` seconds.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ImportError(
            "running on a dask cluster needs dask.distributed: pip install 'napari-tomoseg[distributed]'"
        ) from err
    if (scheduler is None) == (local_cluster is None):
        raise ValueError("give exactly one of scheduler (an address) and local_cluster (a count)")
    if scheduler is not None:
        try:
            return Client(scheduler, timeout=f"{timeout}s"), None
        except (OSError, TimeoutError) as err:
            raise ValueError(
                f"cannot reach the dask scheduler at {scheduler} within {timeout:g} s ({err}); "
                "check the address (tcp://HOST:PORT) and that `dask scheduler` is running there"
            ) from err
    if local_cluster is None or local_cluster < 1:
        raise ValueError(f"local_cluster must be >= 1 worker, got {local_cluster}")
    cluster = LocalCluster(
        n_workers=local_cluster,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    return Client(cluster), cluster


def _worker_segmenter(key: str, model: TomosegModel, config: InferenceConfig) -> Segmenter:
    """The worker's Segmenter of the model scattered under ``key`` (its predictor built once)."""
    cache_key = ("segmenter", key)
    if cache_key not in _WORKER_CACHE:
        _WORKER_CACHE[cache_key] = Segmenter(model, config)
    segmenter: Segmenter = _WORKER_CACHE[cache_key]
    return segmenter


def _worker_volume(path: str, dataset: str | None) -> Any:
    cache_key = ("volume", path, dataset or "")
    if cache_key not in _WORKER_CACHE:
        # Checked as it is read, block by block, like the local pipeline's volume.
        _WORKER_CACHE[cache_key] = finite_checked(io.open_volume(path, dataset=dataset), path)
    return _WORKER_CACHE[cache_key]


def _worker_rings(
    path: str, dataset: str | None, centre: tuple[float, float], fill: float | None
) -> Any:
    """The worker's ring-corrected view of the volume (its per-slice profiles kept across tasks)."""
    from napari_tomoseg.core.prep.rings import RingCorrectedVolume

    cache_key = ("rings", path, dataset or "", centre, fill)
    if cache_key not in _WORKER_CACHE:
        _WORKER_CACHE[cache_key] = RingCorrectedVolume(
            _worker_volume(path, dataset), centre, fill=fill
        )
    return _WORKER_CACHE[cache_key]


def _worker_plan(
    key: str,
    model: TomosegModel,
    config: InferenceConfig,
    source: tuple[str, str | None],
    settings: ResolvedInference,
    grey_range: tuple[float, float],
    rings: tuple[tuple[float, float], float | None] | None,
) -> SegmentPlan:
    """The worker's plan of the whole volume (options and grey range decided by the client)."""
    cache_key = ("plan", key, *source, rings)
    if cache_key not in _WORKER_CACHE:
        if rings is None:
            volume = _worker_volume(*source)
        else:
            volume = _worker_rings(*source, *rings)
        segmenter = _worker_segmenter(key, model, config)
        _WORKER_CACHE[cache_key] = segmenter.plan(volume, grey_range=grey_range, settings=settings)
    plan: SegmentPlan = _WORKER_CACHE[cache_key]
    return plan


def segment_block(
    region: tuple[int, int],
    *,
    source: tuple[str, str | None],
    target: str,
    model: TomosegModel,
    model_key: str,
    config: InferenceConfig,
    settings: ResolvedInference,
    grey_range: tuple[float, float],
    rings_centre: tuple[float, float] | None = None,
    rings_fill: float | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Segment slices ``region[0]:region[1]`` along the slicing axis; write them; return counts.

    Runs on a worker: the Segmenter (and its predictor), the opened volume and its plan are cached
    per worker process; the block is one of the plan's regions, computed by ``plan.compute``.
    """
    import torch
    import zarr

    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    rings = None
    if rings_centre is not None:
        rings = ((float(rings_centre[0]), float(rings_centre[1])), rings_fill)
    plan = _worker_plan(model_key, model, config, source, settings, grey_range, rings)
    where: list[slice] = [slice(0, s) for s in plan.shape]
    where[settings.axis] = slice(*region)
    block = (where[0], where[1], where[2])
    labels, _ = plan.compute(block)
    out = zarr.open_array(target, mode="r+")
    out[block] = labels
    return np.bincount(labels.ravel(), minlength=model.config.n_phases + 1)


def iter_segment_distributed(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: TomosegModel,
    config: InferenceConfig | None = None,
    *,
    dataset: str | None = None,
    client: Any = None,
    scheduler: str | None = None,
    local_cluster: int | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    overwrite: bool = False,
    threads_per_task: int | None = None,
    connect_timeout: float = 10.0,
    cancel: CancelToken | None = None,
) -> Generator[SegmentProgress, None, DistributedResult]:
    """Segment the volume at ``source`` on a dask cluster into ``output``, yielding progress.

    Parameters
    ----------
    source, dataset
        Input volume (any format :func:`~napari_tomoseg.core.io.read_volume` reads) on storage
        every worker can read at the same path.
    output
        ``.zarr`` (or ``.tif`` / ``.npy``, converted at the end) on storage every worker can
        write; written under a temporary name and renamed only when every block succeeded.
    model, config
        As for :func:`~napari_tomoseg.core.segment.iter_segment`; ``config.memory`` is the budget
        of each worker. The 2D, 2.5D and multi-axis modes (valid-region stitching) are distributed.
    client, scheduler, local_cluster
        An existing ``distributed.Client``, or a scheduler address, or a number of local workers.
    threads_per_task
        torch threads in each task (default: the CPU count divided among local workers).
    connect_timeout
        Seconds to wait for the scheduler.

    Raises
    ------
    ValueError
        For an unreachable scheduler (before any output exists), or a 3D / multi-axis mode.
    """
    config = config or InferenceConfig()
    src = Path(source).expanduser()
    volume = io.read_volume(src, dataset=dataset, lazy=True)
    shape = tuple(int(s) for s in volume.shape)
    settings = resolve(config, model, shape, itemsize=np.dtype(volume.dtype).itemsize)
    if settings.stitch != "valid":
        raise ValueError(
            f"mode {settings.mode!r} runs on a single machine only; dask runs the 2d, 2.5d and "
            "2d-3axes modes"
        )
    out_path = io.check_output_path(output, overwrite=overwrite)
    prepared = model.normalization.prepare(
        finite_checked(volume, str(src)), ring_removal=config.ring_removal
    )
    rings_centre = getattr(prepared, "centre", None)  # workers correct their slabs around it
    rings_fill = getattr(prepared, "fill", None)
    grey_range = model.normalization.volume_range(prepared)
    cluster = None
    if client is None:
        client, cluster = connect(
            scheduler=scheduler, local_cluster=local_cluster, timeout=connect_timeout
        )
    t0 = time.perf_counter()
    futures: list[Any] = []
    try:
        n_workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
        if threads_per_task is None and cluster is not None:
            threads_per_task = max(1, (os.cpu_count() or 1) // n_workers)
        chunks = output_chunks(shape, settings)
        with io.streaming_output(
            out_path,
            shape,
            phases=model.phases,
            voxel_size=voxel_size,
            chunks=chunks,
            overwrite=overwrite,
        ) as out:
            target = str(out.store.root) if hasattr(out.store, "root") else str(out.store)
            # The model travels to every worker once; tasks refer to it by its future.
            model_future = client.scatter(model, broadcast=True, hash=False)
            key = secrets.token_hex(8)
            n = shape[settings.axis]
            regions = [(i, min(i + settings.block, n)) for i in range(0, n, settings.block)]
            per_slice = int(np.prod(shape)) // n
            futures = [
                client.submit(
                    segment_block,
                    reg,
                    source=(str(src), dataset),
                    target=target,
                    model=model_future,
                    model_key=key,
                    config=config,
                    settings=settings,
                    grey_range=grey_range,
                    rings_centre=rings_centre,
                    rings_fill=rings_fill,
                    threads=threads_per_task,
                    pure=False,
                )
                for reg in regions
            ]
            region_of = {f.key: reg for f, reg in zip(futures, regions, strict=True)}
            from distributed import as_completed

            counts = np.zeros(model.config.n_phases + 1, np.int64)
            done = 0
            for fut in as_completed(futures):
                if cancel is not None and cancel.cancelled:
                    raise Cancelled("segmentation stopped")
                counts += fut.result()
                i0, i1 = region_of[fut.key]
                done += (i1 - i0) * per_slice
                where: list[slice] = [slice(0, s) for s in shape]
                where[settings.axis] = slice(i0, i1)
                region = (where[0], where[1], where[2])
                yield SegmentProgress(done, int(np.prod(shape)), region, time.perf_counter() - t0)
    finally:
        for f in futures:
            f.cancel()
        if cluster is not None:
            client.close()
            cluster.close()
    dev = resolve_device("cpu" if config.device == "auto" else config.device)
    precision = precision_name(resolve_precision(config.precision, dev))
    return DistributedResult(
        counts=counts,
        seconds=time.perf_counter() - t0,
        precision=precision,
        mode=settings.mode,
        block=settings.block,
        batch_size=settings.batch_size,
        n_workers=n_workers,
        grey_range=grey_range,
    )


def segment_distributed(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    model: TomosegModel,
    config: InferenceConfig | None = None,
    *,
    progress: Callable[[SegmentProgress], None] | None = None,
    **kwargs: Any,
) -> DistributedResult:
    """Run :func:`iter_segment_distributed` to completion (``progress`` gets every event)."""
    return run_to_completion(
        iter_segment_distributed(source, output, model, config, **kwargs), progress
    )
