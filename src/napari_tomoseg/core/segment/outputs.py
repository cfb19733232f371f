"""Where predictions go: label stores, phase counts and the uncertainty (entropy) map.

:func:`prediction_stores` opens the labels store (+ an uncertainty store), both written atomically
-> ``plan.run(stores.out, probabilities_out=stores.probabilities_out)`` fills them region by region
(:class:`PhaseCounter` counts phases on the way, :class:`EntropyWriter` turns probabilities into a
0..255 entropy map) -> on leaving the ``with`` block the stores become their final paths.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core import io
from napari_tomoseg.core.phases import PhaseTable


def entropy(probabilities: npt.ArrayLike, *, axis: int = 0) -> npt.NDArray[np.float32]:
    """Softmax entropy normalised to [0, 1] by ``log C``.

    Parameters
    ----------
    probabilities
        Class probabilities along ``axis`` (C >= 2 entries summing to 1 per voxel).

    Returns
    -------
    float32 array without ``axis``: 0 where one phase has all the probability, 1 where all are equal.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    c = p.shape[axis]
    if c < 2:
        raise ValueError(f"entropy needs probabilities of >= 2 phases along axis {axis}, got {c}")
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.clip(p, 1e-12, None)), np.float32(0))
    h = -terms.sum(axis=axis, dtype=np.float32) / np.float32(np.log(c))
    return np.clip(h, 0.0, 1.0).astype(np.float32, copy=False)


class ScoreSink(Protocol):
    """Anything that accumulates per-region uncertainty (e.g. ``measure``'s SliceScoreAccumulator)."""

    def add(self, region: Sequence[slice], uncertainty: npt.ArrayLike) -> None: ...


class EntropyWriter:
    """A ``probabilities_out`` that keeps, of each region, only its normalised entropy.

    ``writer[(slice(None), *region)] = probs`` (C, *region) writes the entropy of ``probs`` into
    ``out[region]``: as ``rint(255 x entropy)`` when ``out`` is uint8 (a store), else cast to
    ``out``'s dtype (e.g. float16 in memory). ``scores.add(region, entropy)`` is called too when
    ``scores`` is given (per-slice ranking while the segmentation streams).
    """

    def __init__(self, out: Any, scores: ScoreSink | None = None) -> None:
        self.out = out
        self.scores = scores
        self._quantize = np.dtype(out.dtype) == np.uint8

    def __setitem__(self, key: tuple[slice, ...], probabilities: npt.ArrayLike) -> None:
        region = key[1:]
        u = entropy(probabilities)
        if self.scores is not None:
            self.scores.add(region, u)
        if self._quantize:
            self.out[region] = np.rint(u * np.float32(255)).astype(np.uint8)
        else:
            self.out[region] = u.astype(self.out.dtype)


class PhaseCounter:
    """An ``out`` that writes label regions into ``target`` and counts the voxels of each label."""

    def __init__(self, target: Any, n_phases: int) -> None:
        self.target = target
        self.shape = tuple(target.shape)
        self.counts = np.zeros(n_phases + 1, np.int64)  # label 0 (outside the mask) .. C

    def __setitem__(self, key: Any, labels: npt.NDArray[np.uint8]) -> None:
        n = len(self.counts)
        self.counts += np.bincount(labels.ravel(), minlength=n)[:n]
        self.target[key] = labels

    @property
    def fractions(self) -> npt.NDArray[np.float64]:
        """Fraction of the voxels written so far in each phase 1..C (0 = outside the mask counts)."""
        return self.counts[1:] / max(1, int(self.counts.sum()))


@dataclass
class PredictionStores:
    """What :func:`prediction_stores` yields."""

    labels: Any  # the uint8 zarr array the labels go into
    out: PhaseCounter  # pass as ``out``: writes into ``labels`` and counts phases
    uncertainty: Any | None  # the uint8 zarr array of 255 x entropy, if asked for
    probabilities_out: EntropyWriter | None  # pass as ``probabilities_out``


@contextlib.contextmanager
def prediction_stores(
    prediction: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    phases: PhaseTable,
    chunks: Sequence[int],
    uncertainty: str | os.PathLike[str] | None = None,
    voxel_size: Sequence[float] | None = None,
    scores: ScoreSink | None = None,
    overwrite: bool = False,
) -> Iterator[PredictionStores]:
    """The labels store (+ an uncertainty store) of a segmentation, written region by region.

    Both are :func:`~napari_tomoseg.core.io.streaming_output` stores: ``.zarr`` folders (or
    ``.tif`` / ``.npy`` files converted at the end) that appear at their paths only when the block
    completes; a failure or a stop leaves nothing that looks complete.

    Parameters
    ----------
    prediction, uncertainty
        Output paths (``uncertainty`` None: no uncertainty map).
    shape
        (Z, Y, X) of the volume.
    phases, voxel_size
        Metadata stored with the outputs.
    chunks
        Store chunks: ``plan.output_chunks`` (each chunk written once), or what a viewer wants.
    scores
        Receives each region's entropy (see :class:`EntropyWriter`).
    overwrite
        Replace existing outputs.
    """
    with contextlib.ExitStack() as stack:
        labels = stack.enter_context(
            io.streaming_output(
                prediction,
                shape,
                phases=phases,
                voxel_size=voxel_size,
                chunks=chunks,
                overwrite=overwrite,
            )
        )
        unc, writer = None, None
        if uncertainty is not None:
            unc = stack.enter_context(
                io.streaming_output(
                    uncertainty,
                    shape,
                    kind="volume",
                    voxel_size=voxel_size,
                    chunks=chunks,
                    overwrite=overwrite,
                )
            )
            writer = EntropyWriter(unc, scores)
        yield PredictionStores(labels, PhaseCounter(labels, len(phases)), unc, writer)
