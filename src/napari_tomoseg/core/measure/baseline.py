"""The grey-level classifier ("Bin" in the published study): the best any global threshold can do.

fit: (grey value, annotated phase) pairs -> counts per grey-level bin and phase -> the most frequent
phase per bin (bins never seen take the phase of the nearest seen bin) -> a lookup table.
predict: grey value -> bin -> lookup table -> phase id (uint8, 1..C).

Fitted on a volume's own ground truth it is an upper bound for every threshold-based segmentation,
and so the yardstick a learned model must beat. Volumes are processed in slabs along axis 0, so
memory stays bounded for large (memory-mapped) volumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["GreyLevelClassifier", "grey_level_baseline"]

_log = logging.getLogger(__name__)

#: Integer volumes whose annotated grey values span at most this many values get one bin per value.
MAX_EXACT_BINS = 1 << 20
#: Number of equal-width bins for float volumes (and integer volumes with a wider span).
N_FLOAT_BINS = 1024
#: Robust range of float data: these percentiles of the annotated values bound the bins.
ROBUST_PERCENTILES = (0.01, 99.99)
_SLAB_VOXELS = 1 << 22  # voxels per processing slab (~32 MiB of int64 indices)
_SUBSAMPLE = 1 << 20  # annotated values used to estimate the robust range


@dataclass
class GreyLevelClassifier:
    """Predict, for each grey value, the phase most often annotated at that value.

    Parameters
    ----------
    n_phases : int
        C; annotations use 0 for "not annotated" and 1..C for phases.

    Attributes
    ----------
    mode : {"exact", "quantised"}
        ``"exact"``: one bin per integer grey value (uint8 and uint16 volumes: 256 or 65536 bins).
        ``"quantised"``: ``N_FLOAT_BINS`` equal bins between robust limits of the fitted values
        (float volumes, and integer volumes spanning more than ``MAX_EXACT_BINS`` values).
    low, bin_width : float
        Bin ``i`` holds values in ``[low + i * bin_width, low + (i + 1) * bin_width)``; values outside
        the fitted range fall into the first or last bin.
    counts : ndarray of int64, shape (C, n_bins)
        Annotated voxels per phase and bin.
    lookup : ndarray of uint8, shape (n_bins,)
        Predicted phase per bin.

    Examples
    --------
    >>> vol = np.array([10, 10, 10, 10, 20], dtype=np.uint8)
    >>> lab = np.array([1, 1, 1, 2, 2], dtype=np.uint8)
    >>> GreyLevelClassifier(2).fit(vol, lab).predict(np.array([10, 20, 15, 200], dtype=np.uint8))
    array([1, 2, 1, 2], dtype=uint8)
    """

    n_phases: int
    mode: Literal["exact", "quantised"] | None = field(default=None, init=False)
    low: float = field(default=0.0, init=False)
    bin_width: float = field(default=1.0, init=False)
    counts: npt.NDArray[np.int64] | None = field(default=None, init=False, repr=False)
    lookup: npt.NDArray[np.uint8] | None = field(default=None, init=False, repr=False)
    _kind: str = field(default="", init=False, repr=False)  # "i" or "f": what fit saw
    _n_bins_planned: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.n_phases, bool) or not isinstance(self.n_phases, (int, np.integer)):
            raise ValueError(f"n_phases must be an integer in 1..254, got {self.n_phases!r}")
        if not 1 <= self.n_phases <= 254:
            raise ValueError(
                f"n_phases must be in 1..254 (phase ids are uint8, 0 is reserved), got {self.n_phases}"
            )

    @property
    def n_bins(self) -> int:
        """Number of grey-level bins (0 before fitting)."""
        return 0 if self.lookup is None else int(self.lookup.size)

    def fit(self, volume: npt.ArrayLike, labels: npt.ArrayLike) -> GreyLevelClassifier:
        """Count annotated voxels per grey level and phase; keep the majority phase per level.

        Parameters
        ----------
        volume : array of int or float
            Grey values; no NaN or infinity.
        labels : array of int
            Same shape; 0 = not annotated (ignored), 1..C = phase. Sparse annotations are fine.

        Returns
        -------
        self
        """
        vol = _as_volume(volume, "volume")
        lab = np.asarray(labels)
        if lab.shape != vol.shape:
            raise ValueError(f"labels shape {lab.shape} differs from volume shape {vol.shape}")
        if not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(
                f"labels must hold integer phase ids 0..{self.n_phases}, got dtype {lab.dtype}"
            )
        _check_labels(lab, self.n_phases)
        n_annotated = int(np.count_nonzero(lab))
        if n_annotated == 0:
            raise ValueError(
                "labels hold no annotated voxel (all 0); annotate at least one voxel of a phase"
            )
        if vol.dtype.kind == "f":
            _check_finite(vol, "volume")

        self._kind = "f" if vol.dtype.kind == "f" else "i"
        self._choose_bins(vol, lab)
        n_bins = self._n_bins_planned
        counts = np.zeros((self.n_phases + 1) * n_bins, dtype=np.int64)
        for sl in _slabs(vol.shape):
            b = self._bin(np.asarray(vol[sl]))
            key = np.asarray(lab[sl]).astype(np.int64) * n_bins + b
            counts += np.bincount(key.ravel(), minlength=counts.size)
        table = counts.reshape(self.n_phases + 1, n_bins)[1:]  # row 0: not annotated
        self.counts = table
        self.lookup = _majority_with_nearest_fill(table)
        return self

    def predict(self, volume: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Phase id (uint8, 1..C) of every voxel of ``volume``.

        Grey values never seen during fit take the phase of the nearest seen value; values beyond
        the fitted range take the phase of the lowest or highest bin.
        """
        if self.lookup is None:
            raise RuntimeError("GreyLevelClassifier is not fitted; call fit(volume, labels) first")
        vol = _as_volume(volume, "volume")
        kind = "f" if vol.dtype.kind == "f" else "i"
        if kind != self._kind:
            fitted = "floating-point" if self._kind == "f" else "integer"
            raise ValueError(
                f"the classifier was fitted on {fitted} grey values but got a volume of dtype {vol.dtype}; "
                "predict volumes of the same kind (convert both, e.g. with astype, to the same dtype)"
            )
        if kind == "f":
            _check_finite(vol, "volume")
        out = np.empty(vol.shape, dtype=np.uint8)
        for sl in _slabs(vol.shape):
            out[sl] = self.lookup[self._bin(np.asarray(vol[sl]))]
        return out

    # ----------------------------------------------------------------------------------------

    def _choose_bins(self, vol: npt.NDArray[np.generic], lab: npt.NDArray[np.integer]) -> None:
        dt = vol.dtype
        if dt.kind == "b" or (dt.kind in "ui" and dt.itemsize <= 2):
            # Small integer types: the lookup covers the whole dtype, so no range pass is needed.
            info = np.iinfo(np.uint8 if dt.kind == "b" else dt)  # type: ignore[type-var]
            lo, hi = (0, 1) if dt.kind == "b" else (int(info.min), int(info.max))
            self.mode, self.low, self.bin_width = "exact", float(lo), 1.0
            self._n_bins_planned = hi - lo + 1
            return
        if dt.kind in "ui":
            lo, hi = _annotated_min_max(vol, lab)
            if hi - lo + 1 <= MAX_EXACT_BINS:
                self.mode, self.low, self.bin_width = "exact", float(lo), 1.0
                self._n_bins_planned = hi - lo + 1
                return
        sample = _annotated_sample(vol, lab).astype(np.float64)
        lo_f, hi_f = (float(v) for v in np.percentile(sample, ROBUST_PERCENTILES))
        if hi_f <= lo_f:  # constant data: one bin would do, keep N bins for a uniform code path
            hi_f = lo_f + 1.0
        self.mode, self.low = "quantised", lo_f
        self.bin_width = (hi_f - lo_f) / N_FLOAT_BINS
        self._n_bins_planned = N_FLOAT_BINS

    def _bin(self, values: npt.NDArray[np.generic]) -> npt.NDArray[np.int64]:
        n = self._n_bins_planned
        if self.mode == "exact":
            b = values.astype(np.int64) - int(self.low)
        else:
            b = np.floor((values.astype(np.float64) - self.low) / self.bin_width).astype(np.int64)
        return np.clip(b, 0, n - 1, out=b)


def grey_level_baseline(
    volume: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_phases: int,
    *,
    reference: npt.ArrayLike | None = None,
) -> npt.NDArray[np.uint8]:
    """Fit a :class:`GreyLevelClassifier` on ``labels`` and segment ``volume`` with it.

    Parameters
    ----------
    volume : array
        Grey values.
    labels : array of int
        Annotations of ``volume`` (0 = not annotated, 1..C); full ground truth gives the published
        "Bin" upper bound of threshold segmentation.
    n_phases : int
        C.
    reference : array of int, optional
        Ground truth (0 = not annotated) to score the prediction against; when given, the per-phase
        and mean Jaccard are logged at INFO level (``napari_tomoseg.core.measure.baseline`` logger).

    Returns
    -------
    ndarray of uint8
        Phase ids 1..C, shape of ``volume``.
    """
    prediction = GreyLevelClassifier(n_phases).fit(volume, labels).predict(volume)
    if reference is not None:
        from napari_tomoseg.core.measure.metrics import jaccard_per_phase, mean_jaccard

        scores = jaccard_per_phase(prediction, reference, n_phases)
        _log.info(
            "grey-level baseline Jaccard per phase %s, mean %.4f",
            np.round(scores, 4).tolist(),
            mean_jaccard(scores),
        )
    return prediction


# --------------------------------------------------------------------------------------------


def _as_volume(volume: npt.ArrayLike, name: str) -> npt.NDArray[np.generic]:
    vol = np.asarray(volume)
    if vol.dtype.kind not in "uifb":
        raise ValueError(
            f"{name} must hold integer or floating-point grey values, got dtype {vol.dtype}"
        )
    if vol.ndim == 0:
        raise ValueError(f"{name} must be an array, got a scalar")
    return vol


def _check_labels(lab: npt.NDArray[np.integer], n_phases: int) -> None:
    if lab.size == 0:
        return
    lo, hi = int(lab.min()), int(lab.max())
    if lo < 0 or hi > n_phases:
        found = np.unique(lab)
        bad = found[(found < 0) | (found > n_phases)]
        raise ValueError(
            f"labels hold ids {bad.tolist()[:10]} outside the allowed 0..{n_phases} "
            f"(0 = not annotated, 1..{n_phases} = phases); ids found: {found.tolist()[:20]}"
        )


def _check_finite(vol: npt.NDArray[np.generic], name: str) -> None:
    for sl in _slabs(vol.shape):
        if not np.all(np.isfinite(vol[sl])):
            raise ValueError(
                f"{name} contains NaN or infinite values; replace or mask them before classifying"
            )


def _slabs(shape: tuple[int, ...]) -> list[tuple[slice, ...]]:
    if len(shape) == 0 or shape[0] == 0:
        return [tuple(slice(None) for _ in shape)]
    per = int(np.prod(shape[1:], dtype=np.int64)) or 1
    step = max(1, _SLAB_VOXELS // per)
    return [(slice(i, min(i + step, shape[0])),) for i in range(0, shape[0], step)]


def _annotated_min_max(
    vol: npt.NDArray[np.generic], lab: npt.NDArray[np.integer]
) -> tuple[int, int]:
    lo, hi = None, None
    for sl in _slabs(vol.shape):
        v = np.asarray(vol[sl])[np.asarray(lab[sl]) > 0]
        if v.size:
            a, b = int(v.min()), int(v.max())
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    assert lo is not None and hi is not None  # fit() has checked that something is annotated
    return lo, hi


def _annotated_sample(
    vol: npt.NDArray[np.generic], lab: npt.NDArray[np.integer]
) -> npt.NDArray[np.generic]:
    """Up to ~``_SUBSAMPLE`` annotated values, taken at a regular stride (deterministic)."""
    n_annotated = int(np.count_nonzero(lab))
    stride = max(1, n_annotated // _SUBSAMPLE)
    parts = []
    for sl in _slabs(vol.shape):
        v = np.asarray(vol[sl])[np.asarray(lab[sl]) > 0]
        parts.append(v[::stride])
    return np.concatenate(parts)


def _majority_with_nearest_fill(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """Majority phase (1-based) per bin; empty bins copy the nearest non-empty bin (lower on ties)."""
    lookup = (np.argmax(counts, axis=0) + 1).astype(np.uint8)  # ties go to the lower phase id
    seen = np.flatnonzero(counts.sum(axis=0) > 0)
    n = counts.shape[1]
    if seen.size == n:
        return lookup
    pos = np.arange(n)
    right = np.searchsorted(seen, pos).clip(0, seen.size - 1)
    left = (right - 1).clip(0, seen.size - 1)
    take_left = np.abs(pos - seen[left]) <= np.abs(seen[right] - pos)
    nearest = np.where(take_left, seen[left], seen[right])
    return lookup[nearest]
