"""The one segmentation pipeline every front end calls (CLI, widgets, suggestions, dask workers).

``Segmenter(model, config)`` (device, precision, the one predictor) -> ``.plan(volume)`` (options
resolved, volume prepared: ring removal and grey range, region grid, output chunks, once) ->
``plan.run(out)`` streams regions load (reader thread) -> compute -> store (writer thread).

``plan.compute(region)`` is one region's load + compute: what a dask worker runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from napari_tomoseg.core.checks import finite_checked
from napari_tomoseg.core.model import TomosegModel
from napari_tomoseg.core.progress import Cancelled, CancelToken, SegmentProgress, run_to_completion
from napari_tomoseg.core.segment.memory import format_bytes
from napari_tomoseg.core.segment.options import (
    InferenceConfig,
    ResolvedInference,
    resolve,
    resolve_tta,
)
from napari_tomoseg.core.segment.predictor import Predictor, TestTimeAugmented
from napari_tomoseg.core.segment.strategies import (
    NetworkInfo,
    Region,
    output_chunks,
    region_grid,
    strategy_for,
)
from napari_tomoseg.core.segment.tiling import PredictFn

log = logging.getLogger(__name__)


@dataclass
class SegmentResult:
    """What :meth:`SegmentPlan.run` (and :func:`iter_segment`) return."""

    labels: Any  # uint8 array-like (the ``out`` passed in, or a new numpy array)
    probabilities: Any | None
    grey_range: tuple[float, float]
    seconds: float
    settings: ResolvedInference
    device: str
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)


class Segmenter:
    """A model ready to segment volumes: device and precision resolved once, one predictor.

    Parameters
    ----------
    model : TomosegModel
    config : InferenceConfig
        ``None`` fields take the model's defaults when a volume is planned.
    predictor : callable, optional
        Use this instead of building a :class:`~.predictor.Predictor` (tests, benchmarks: any
        callable from normalised batches to probabilities). Its results report device and
        precision ``custom`` unless it has ``device`` / ``dtype`` attributes. With test-time
        augmentation it is wrapped in :class:`~.predictor.TestTimeAugmented`.

    Attributes
    ----------
    model, config, predictor
    device : torch.device or None
        Where the network runs (None for a plain callable predictor).
    precision_name : str
        ``fp32``, ``bf16``, ``fp16`` (or ``custom``).
    tta : bool
        Whether test-time augmentation runs (the config's ``tta``, else the model's default).

    Notes
    -----
    A Segmenter pickles (the model travels, the predictor is rebuilt), so a dask worker can hold
    one per process and plan the blocks it is given.
    """

    def __init__(
        self,
        model: TomosegModel,
        config: InferenceConfig = InferenceConfig(),  # noqa: B008 (frozen: immutable)
        *,
        predictor: PredictFn | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self._custom = predictor is not None and not isinstance(predictor, Predictor)
        # Test-time augmentation lives in the predictor, so every path through it gets it.
        self.tta = resolve_tta(config, model)
        self._given = predictor  # as passed: with_options wraps it afresh
        if predictor is None:
            predictor = Predictor(
                model, device=config.device, precision=config.precision, tta=self.tta
            )
        elif isinstance(predictor, Predictor):
            predictor = predictor.with_tta(self.tta)
        device = getattr(predictor, "device", None)
        self.device: torch.device | None = device if isinstance(device, torch.device) else None
        self.dtype: torch.dtype = getattr(predictor, "dtype", torch.float32)
        self.precision_name: str = getattr(predictor, "precision_name", "custom")
        if self._custom and self.tta:
            predictor = TestTimeAugmented(predictor)
        self.predictor: PredictFn = predictor

    def __getstate__(self) -> dict[str, Any]:
        if self._custom:
            raise TypeError("a Segmenter with a custom predictor cannot be pickled")
        return {"model": self.model, "config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["model"], state["config"])

    def with_options(self, **changes: Any) -> Segmenter:
        """A Segmenter with some :class:`InferenceConfig` fields changed (e.g. ``mode``, ``axis``);
        it shares this one's predictor when device and precision stay the same."""
        config = replace(self.config, **changes)
        same = (config.device, config.precision) == (self.config.device, self.config.precision)
        if same and self._custom:
            return Segmenter(self.model, config, predictor=self._given)
        return Segmenter(self.model, config, predictor=self.predictor if same else None)

    def resolve(
        self, shape: tuple[int, ...], *, itemsize: int = 1, probabilities: bool = False
    ) -> ResolvedInference:
        """Every option decided for a volume of ``shape`` on this device (see :func:`~.options.resolve`)."""
        return resolve(
            self.config,
            self.model,
            shape,
            itemsize=itemsize,
            probabilities=probabilities,
            device=self.device,
            dtype=self.dtype,
        )

    def prepare(self, volume: Any, *, name: str = "volume") -> tuple[Any, tuple[float, float]]:
        """``volume`` prepared as the model asks (ring removal, a lazy view) and its grey range.

        A caller segmenting part of a volume (a preview, a block) prepares the whole volume once and
        passes ``grey_range`` to :meth:`plan` with the prepared part. A float volume is read through
        :func:`~napari_tomoseg.core.checks.finite_checked`: every block read (the grey range's
        sample, ring detection, each region) raises
        :class:`~napari_tomoseg.core.checks.NonFiniteError` naming ``name`` and the first
        z-slice holding NaN or inf, so no region is ever segmented from NaN.
        """
        norm = self.model.normalization
        volume = finite_checked(volume, name)
        prepared = norm.prepare(volume, ring_removal=self.config.ring_removal)
        return prepared, norm.volume_range(prepared)

    def plan(
        self,
        volume: Any,
        *,
        mask: Any | None = None,
        probabilities: bool = False,
        grey_range: tuple[float, float] | None = None,
        settings: ResolvedInference | None = None,
        name: str = "volume",
    ) -> SegmentPlan:
        """Decide how ``volume`` is segmented: options, preparation, regions and output chunks.

        Parameters
        ----------
        volume : (Z, Y, X) array-like
            numpy, memory-mapped, zarr, HDF5 or a lazy slice stack; read one region at a time.
        mask : (Z, Y, X) bool array-like, optional
            Voxels outside it are labelled 0.
        probabilities : bool
            Whether probabilities are wanted (``probabilities_out``); counts in the memory plan.
        grey_range : (low, high), optional
            The grey values mapped to 0 and 1. When given, ``volume`` is taken as already prepared
            (see :meth:`prepare`); by default it is prepared here, once.
        settings : ResolvedInference, optional
            Options already resolved elsewhere (a dask client for its workers): used as they are.
        name : str
            What to call the volume in errors (its file): NaN or inf found while reading it.

        Raises
        ------
        ValueError
            For a volume that is not 3D, a mask of another shape, or options that do not fit.
        """
        shape = tuple(int(s) for s in volume.shape)
        if len(shape) != 3:
            raise ValueError(f"expected a 3D volume (z, y, x), got shape {shape}")
        if mask is not None and tuple(mask.shape) != shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from the volume's {shape}")
        if settings is None:
            settings = self.resolve(
                shape, itemsize=np.dtype(volume.dtype).itemsize, probabilities=probabilities
            )
        if grey_range is None:
            volume, grey_range = self.prepare(volume, name=name)
        return SegmentPlan(
            self, volume, settings, grey_range, mask=mask, probabilities=probabilities
        )


class SegmentPlan:
    """One volume's segmentation, decided: run it whole (:meth:`run`, :meth:`segment`) or region by
    region (:meth:`compute`). Made by :meth:`Segmenter.plan`.

    Attributes
    ----------
    settings : ResolvedInference
    shape : (Z, Y, X)
    volume
        The prepared volume (ring removal applied lazily when the model asks for it).
    grey_range : (low, high)
    regions : list of (slice, slice, slice)
        The regions in the order they are segmented.
    output_chunks : (int, int, int)
        Chunks for a store written region by region (each chunk written once).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        volume: Any,
        settings: ResolvedInference,
        grey_range: tuple[float, float],
        *,
        mask: Any | None = None,
        probabilities: bool = False,
    ) -> None:
        self.segmenter = segmenter
        self.volume = volume
        self.settings = settings
        self.grey_range = (grey_range[0], grey_range[1])
        self.mask = mask
        self.probabilities = probabilities
        self.shape: tuple[int, int, int] = tuple(int(s) for s in volume.shape)  # type: ignore[assignment]
        self.regions: list[Region] = region_grid(self.shape, settings)
        self.output_chunks = output_chunks(self.shape, settings)
        cfg = segmenter.model.config
        self._strategy = strategy_for(
            volume,
            settings,
            segmenter.predictor,
            NetworkInfo(cfg.n_phases, cfg.in_channels, cfg.multiple),
            self.grey_range,
        )

    def _masked(self, region: Region, labels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        if self.mask is not None:
            labels[~np.asarray(self.mask[region], dtype=bool)] = 0
        return labels

    def compute(
        self, region: Region, *, cancel: CancelToken | None = None
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
        """Labels (uint8, 1..C, 0 outside the mask) and, if the plan asked for them, float32
        probabilities (C, ...) of one of :attr:`regions`: exactly what :meth:`run` stores there."""
        data = self._strategy.load(region)
        labels, probs = self._strategy.compute(
            region, data, probabilities=self.probabilities, cancel=cancel
        )
        return self._masked(region, labels), probs if self.probabilities else None

    def run(
        self,
        out: Any | None = None,
        *,
        probabilities_out: Any | None = None,
        cancel: CancelToken | None = None,
    ) -> Generator[SegmentProgress, None, SegmentResult]:
        """Segment every region, yielding a :class:`SegmentProgress` once each is stored in ``out``.

        A reader thread loads the next region while the network runs on the current one, and a
        writer thread stores finished labels.

        Parameters
        ----------
        out : array-like, optional
            uint8 (Z, Y, X) destination (e.g. a zarr array); a new numpy array by default.
        probabilities_out : array-like, optional
            float16 (C, Z, Y, X) destination, or anything that accepts
            ``probabilities_out[(slice(None), *region)] = block`` (e.g. an
            :class:`~.outputs.EntropyWriter`); needs a plan made with ``probabilities=True``.
        cancel : CancelToken, optional
            Checked between batches; raises :class:`~napari_tomoseg.core.progress.Cancelled`.

        Returns
        -------
        SegmentResult (through ``StopIteration.value``; see :meth:`segment`).
        """
        if probabilities_out is not None and not self.probabilities:
            raise ValueError(
                "probabilities_out needs a plan made with probabilities=True (Segmenter.plan)"
            )
        shape, r, seg = self.shape, self.settings, self.segmenter
        if out is None:
            out = np.zeros(shape, np.uint8)
        elif tuple(out.shape) != shape:
            raise ValueError(f"output shape {tuple(out.shape)} differs from the volume's {shape}")
        log.info(
            "segmenting %s: mode %s, axis %d, tile %d, overlap %d, %s stitching, block %d, batch %d%s",
            shape,
            r.mode,
            r.axis,
            r.tile,
            r.overlap,
            r.stitch,
            r.block,
            r.batch_size,
            f", expected peak {format_bytes(r.memory_estimate)}" if r.memory_estimate else "",
        )
        t0 = time.perf_counter()
        total = int(np.prod(shape))
        regions = self.regions
        strategy = self._strategy
        wanted = self.probabilities

        def store(region: Region, labels: Any, probs: Any) -> None:
            out[region] = self._masked(region, labels)
            if probabilities_out is not None:
                probabilities_out[(slice(None), *region)] = probs.astype(np.float16)

        done = 0
        # Threads, not processes: reading (zarr/TIFF decompression, memmap copies) and numpy release
        # the GIL, so IO overlaps the network without copying blocks between processes.
        with (
            ThreadPoolExecutor(1, thread_name_prefix="tomoseg-read") as reader,
            ThreadPoolExecutor(1, thread_name_prefix="tomoseg-write") as writer,
        ):
            upcoming: Future[Any] = reader.submit(strategy.load, regions[0])
            pending: tuple[Future[None], SegmentProgress] | None = None
            try:
                for i, region in enumerate(regions):
                    if cancel is not None and cancel.cancelled:
                        raise Cancelled("segmentation stopped")
                    data = upcoming.result()
                    if i + 1 < len(regions):
                        upcoming = reader.submit(strategy.load, regions[i + 1])
                    labels, probs = strategy.compute(
                        region, data, probabilities=wanted, cancel=cancel
                    )
                    del data
                    if pending is not None:
                        pending[0].result()
                        yield pending[1]
                    done += labels.size
                    event = SegmentProgress(done, total, region, time.perf_counter() - t0)
                    pending = (writer.submit(store, region, labels, probs), event)
                    del labels, probs
                if pending is not None:
                    pending[0].result()
                    yield pending[1]
            finally:
                upcoming.cancel()
        return SegmentResult(
            labels=out,
            probabilities=probabilities_out,
            grey_range=self.grey_range,
            seconds=time.perf_counter() - t0,
            settings=r,
            device="custom" if seg.device is None else str(seg.device),
            precision=seg.precision_name,
        )

    def segment(
        self,
        out: Any | None = None,
        *,
        probabilities_out: Any | None = None,
        progress: Callable[[SegmentProgress], None] | None = None,
        cancel: CancelToken | None = None,
    ) -> SegmentResult:
        """:meth:`run` to completion; ``progress`` gets every event."""
        return run_to_completion(
            self.run(out, probabilities_out=probabilities_out, cancel=cancel), progress
        )


def iter_segment(
    volume: Any,
    predictor: PredictFn,
    config: InferenceConfig = InferenceConfig(),  # noqa: B008 (frozen: immutable)
    *,
    model: TomosegModel | None = None,
    out: Any | None = None,
    probabilities_out: Any | None = None,
    mask: Any | None = None,
    grey_range: tuple[float, float] | None = None,
    cancel: CancelToken | None = None,
) -> Generator[SegmentProgress, None, SegmentResult]:
    """Segment ``volume`` region by region with ``predictor``, yielding progress; a thin wrapper:
    ``Segmenter(model, config, predictor=predictor).plan(volume, ...).run(out, ...)``.

    ``predictor`` is a :class:`~.predictor.Predictor` or any callable on normalised batches (then
    pass ``model`` for its defaults, phases and normalisation). See :meth:`Segmenter.plan` and
    :meth:`SegmentPlan.run` for the other parameters.
    """
    model = model or getattr(predictor, "model", None)
    if model is None:
        raise ValueError("pass model= when predictor is a plain callable")
    plan = Segmenter(model, config, predictor=predictor).plan(
        volume, mask=mask, probabilities=probabilities_out is not None, grey_range=grey_range
    )
    return (yield from plan.run(out, probabilities_out=probabilities_out, cancel=cancel))


def segment_volume(
    volume: Any,
    model: TomosegModel,
    config: InferenceConfig = InferenceConfig(),  # noqa: B008 (frozen: immutable)
    *,
    progress: Callable[[SegmentProgress], None] | None = None,
    out: Any | None = None,
    probabilities_out: Any | None = None,
    mask: Any | None = None,
    grey_range: tuple[float, float] | None = None,
    cancel: CancelToken | None = None,
) -> SegmentResult:
    """Segment a whole volume with ``model`` and return the :class:`SegmentResult` (labels 1..C)."""
    plan = Segmenter(model, config).plan(
        volume, mask=mask, probabilities=probabilities_out is not None, grey_range=grey_range
    )
    return plan.segment(out, probabilities_out=probabilities_out, progress=progress, cancel=cancel)
