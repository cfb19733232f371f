"""Ring-artifact removal for CT volumes: narrow rings around the rotation axis, slice by slice.

A miscalibrated detector pixel puts a thin bright or dark circle around the rotation axis into
every reconstructed slice it contributes to. Rings are the hardest part of a typical CT scan for a
segmentation network: a dark ring crossing a fibre's rim looks exactly like the matrix next to it.
Because a ring is the same at every angle, it can be measured and subtracted before segmenting:

    slice -> median grey value on each thin annulus around the axis (robust to the objects in it)
    -> minus its running median over ~10 voxels of radius (keeps steps: specimen edge, field of view)
    -> what is left is narrow, i.e. the rings -> shrunk by its standard error -> subtracted.

The rotation axis is assumed perpendicular to axis 0 (z), as in a stack of reconstructed slices.
:func:`detect_rings` finds its centre near the middle of the slices (where the rings are sharpest)
and decides whether the volume has rings at all: a volume without them (another modality, an
already corrected scan) is used as it is, and a ring estimate within its standard error of zero is
never subtracted.

Each slice's correction depends only on that slice and the centre, never on which block of the
volume is read, so segmenting block by block stays seam-free and exactly tileable.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

log = logging.getLogger(__name__)

#: Width of the radial bins in voxels; rings are about one detector pixel (1-2 voxels) wide.
BIN = 0.5
#: Radial window (voxels) of the running median that separates narrow rings from broad trends.
WINDOW = 10.0
#: Bins holding fewer voxels than this (near the axis) are left uncorrected.
MIN_COUNT = 32
#: Bins whose voxels cover less than this fraction of their full circle (the slice's corners)
#: are left uncorrected: on a short arc one object can hold the median.
MIN_ARC = 0.3
#: Ring estimates within this many standard errors of zero are treated as noise.
SIGNIFICANCE = 3.0
#: A volume has rings when at least this share of its annuli carries a significant ring.
DETECTION = 0.04


@dataclass(frozen=True)
class _Annuli:
    """The radial bins of one slice shape around one centre, sorted once for all slices."""

    bins: npt.NDArray[np.intp]  # (Y, X) bin of each voxel
    order: npt.NDArray[np.intp]  # voxel order that groups the bins
    sorted_bins: npt.NDArray[np.float64]  # bins[order], as float for the sort keys
    starts: npt.NDArray[np.intp]  # first sorted voxel of each present bin
    counts: npt.NDArray[np.intp]  # voxels of each present bin
    present: npt.NDArray[np.intp]  # the bin numbers present

    @classmethod
    def of(cls, plane: tuple[int, int], centre: tuple[float, float]) -> _Annuli:
        yy = np.arange(plane[0], dtype=np.float64) - centre[0]
        xx = np.arange(plane[1], dtype=np.float64) - centre[1]
        bins = np.rint(np.hypot(yy[:, None], xx[None, :]) / BIN).astype(np.intp)
        flat = bins.ravel()
        order = np.argsort(flat, kind="stable")
        counts_all = np.bincount(flat)
        present = np.nonzero(counts_all)[0]
        counts = counts_all[present]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.intp)
        return cls(bins, order, flat[order].astype(np.float64), starts, counts, present)

    @property
    def n_bins(self) -> int:
        return int(self.present[-1]) + 1


def _usable(annuli: _Annuli, counts: npt.NDArray[np.intp] | None = None) -> npt.NDArray[np.bool_]:
    """Bins with enough voxels on a long enough arc for a robust median."""
    c = annuli.counts if counts is None else counts
    full_circle = 2.0 * np.pi * np.maximum(annuli.present, 1) * BIN * BIN
    return (c >= MIN_COUNT) & (c >= MIN_ARC * full_circle)


def ring_profile(
    plane: npt.ArrayLike, annuli: _Annuli, *, fill: float | None = None
) -> npt.NDArray[np.float32]:
    """The ring component of one slice, per radial bin (grey units; 0 where nothing is found).

    Voxels equal to ``fill`` (the constant outside a reconstruction's field of view) are left out.
    """
    values = np.asarray(plane, dtype=np.float64).ravel()[annuli.order]
    if not np.isfinite(values).all():
        raise ValueError(
            "volume holds NaN or inf values; replace them (e.g. np.nan_to_num) before segmenting"
        )
    profile = np.zeros(annuli.n_bins, np.float32)
    s, c = annuli.starts, annuli.counts
    valid = None if fill is None else values != fill
    if valid is not None:
        if not valid.any():
            return profile
        c = np.add.reduceat(valid.astype(np.intp), s)
        lo, hi = float(values[valid].min()), float(values[valid].max())
    else:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        return profile
    # Sort the values inside each bin with one sort: bin + value scaled into [0, 1) (left-out
    # voxels just below 1: last in their bin, past the ``c`` counted ones).
    scale = 0.999 / (hi - lo)
    offset = (values - lo) * scale
    if valid is not None:
        offset[~valid] = 0.9995
    keys = annuli.sorted_bins + offset
    keys.sort()
    within = (keys - annuli.sorted_bins) / scale + lo
    usable = _usable(annuli, c)
    cc = np.maximum(c, 1)
    median = 0.5 * (within[s + (cc - 1) // 2] + within[s + cc // 2])
    iqr = within[s + (3 * (cc - 1)) // 4] - within[s + (cc - 1) // 4]
    if valid is not None:
        if not usable.any():
            return profile
        # bins without (enough) voxels in the field of view take their neighbours' level, so that
        # the running median sees the field of view only
        at = np.nonzero(usable)[0]
        median = np.interp(np.arange(median.size), at, median[at])
    size = round(WINDOW / BIN) | 1
    narrow = median - ndimage.median_filter(median, size=size, mode="nearest")
    # standard error of a median: 1.2533 sigma / sqrt(n), sigma from the IQR
    stderr = 1.2533 * (iqr / 1.349) / np.sqrt(cc)
    narrow = np.sign(narrow) * np.maximum(np.abs(narrow) - SIGNIFICANCE * stderr, 0.0)
    narrow[~usable] = 0.0
    profile[annuli.present] = narrow
    return profile


def field_of_view_fill(planes: list[npt.NDArray[Any]]) -> float | None:
    """The constant outside a reconstruction's circular field of view, when the slices have one.

    It is the value shared by the 3x3 corners of every given slice (noise makes corners of real
    voxels differ); None when they differ.
    """
    corners: list[npt.NDArray[Any]] = []
    for p in planes:
        if min(p.shape) < 6:
            return None
        corners += [p[:3, :3], p[:3, -3:], p[-3:, :3], p[-3:, -3:]]
    values = np.concatenate([np.ravel(c) for c in corners])
    return float(values[0]) if values.size and np.all(values == values[0]) else None


@dataclass(frozen=True)
class RingDetection:
    """Where the rotation axis is and whether ``volume`` has rings worth removing.

    ``fraction`` is the share of (slice, annulus) pairs of the sampled slices whose ring estimate
    is significant at the best centre: about 1 % on ring-free volumes (chance), 6-25 % on scans with
    rings.
    """

    centre: tuple[float, float]
    fraction: float
    fill: float | None = None  # the constant outside the field of view, if any

    @property
    def found(self) -> bool:
        return self.fraction >= DETECTION


#: Detections of the volumes seen lately, by the content of the slices they were made from: the
#: Segment and Fine-tune steps of a session read the same volume again and again.
_DETECTIONS: OrderedDict[bytes, RingDetection] = OrderedDict()
_DETECTIONS_LOCK = threading.Lock()
_REMEMBERED = 16


def detect_rings(
    volume: Any, *, search: float = 6.0, n_slices: int = 8, crop: int = 256
) -> RingDetection:
    """Find the (y, x) rotation-axis position that makes the rings of ``volume`` sharpest.

    Searched within ``search`` voxels of the slice centre, in steps of 2, 1 and 0.25 voxels, on
    ``n_slices`` evenly spaced slices (their central ``crop``² voxels: the axis position, not
    the field of view, decides the sharpness). The answer depends only on those slices: it is
    remembered by a hash of their content, so the same volume is searched once per session.
    """
    nz, ny, nx = (int(s) for s in volume.shape)
    zs = sorted(set(np.linspace(0, nz - 1, min(n_slices, nz)).round().astype(int).tolist()))
    whole = [np.ascontiguousarray(volume[z]) for z in zs]  # corners for the fill, centre crops
    digest = hashlib.blake2b(repr((volume.shape, search, crop, zs)).encode(), digest_size=32)
    for plane in whole:
        digest.update(plane.dtype.str.encode())
        digest.update(memoryview(plane).cast("B"))
    key = digest.digest()
    with _DETECTIONS_LOCK:
        known = _DETECTIONS.get(key)
        if known is not None:
            _DETECTIONS.move_to_end(key)
            return known
    detection = _search_centre(whole, (ny, nx), search, crop)
    with _DETECTIONS_LOCK:
        _DETECTIONS[key] = detection
        while len(_DETECTIONS) > _REMEMBERED:
            _DETECTIONS.popitem(last=False)
    return detection


def _search_centre(
    whole: list[npt.NDArray[Any]], plane_shape: tuple[int, int], search: float, crop: int
) -> RingDetection:
    """:func:`detect_rings` on the slices read for it."""
    ny, nx = plane_shape
    y0, x0 = max(0, (ny - crop) // 2), max(0, (nx - crop) // 2)
    window = (slice(y0, min(ny, y0 + crop)), slice(x0, min(nx, x0 + crop)))
    fill = field_of_view_fill(whole)
    planes = [w[window].astype(np.float64) for w in whole]
    middle = np.array([(ny - 1) / 2 - y0, (nx - 1) / 2 - x0])

    def profiles(
        centre: npt.NDArray[np.float64], sample: list[npt.NDArray[np.float64]]
    ) -> tuple[_Annuli, list[npt.NDArray[np.float32]]]:
        annuli = _Annuli.of(planes[0].shape, (float(centre[0]), float(centre[1])))
        return annuli, [ring_profile(p, annuli, fill=fill) for p in sample]

    def sharpness(centre: npt.NDArray[np.float64], sample: list[npt.NDArray[np.float64]]) -> float:
        return sum(float(np.sum(p.astype(np.float64) ** 2)) for p in profiles(centre, sample)[1])

    # coarse to fine: 2-voxel steps over the whole search square on half the slices, then 1 and
    # 0.25 voxels around the best so far (about 110 evaluations)
    best = middle
    for step, reach, sample in (
        (2.0, search, planes[::2]),
        (1.0, 1.0, planes[::2]),
        (0.25, 0.75, planes),
    ):
        offsets = np.arange(-reach, reach + 1e-9, step)
        candidates = [best + np.array([dy, dx]) for dy in offsets for dx in offsets]
        scores = [sharpness(c, sample) for c in candidates]
        best = candidates[int(np.argmax(scores))]
    annuli, found = profiles(best, planes)
    usable = annuli.present[_usable(annuli)]
    fraction = float(np.mean([np.mean(p[usable] != 0) for p in found])) if usable.size else 0.0
    return RingDetection((float(best[0] + y0), float(best[1] + x0)), fraction, fill)


def remove_rings(volume: Any, detection: RingDetection | None = None) -> Any:
    """``volume`` as a lazily :class:`RingCorrectedVolume` when it has rings, else unchanged."""
    if isinstance(volume, RingCorrectedVolume):
        return volume
    detection = detection or detect_rings(volume)
    if not detection.found:
        log.info(
            "no ring artifacts found (%.1f %% significant annuli); the volume is used as it is",
            100 * detection.fraction,
        )
        return volume
    cy, cx = detection.centre
    log.info(
        "ring artifacts around (y %.2f, x %.2f) in %.0f %% of the annuli: removing them",
        cy,
        cx,
        100 * detection.fraction,
    )
    return RingCorrectedVolume(volume, detection.centre, fill=detection.fill)


class RingCorrectedVolume:
    """A read-only, lazily ring-corrected float32 view of a (Z, Y, X) volume.

    Indexing reads the raw voxels and subtracts each z slice's ring profile (computed from the
    whole slice on first use and cached: a few kB per slice). Pickles without its cache, so dask
    workers can read it.
    """

    def __init__(
        self, volume: Any, centre: tuple[float, float] | None = None, *, fill: float | None = None
    ) -> None:
        if len(volume.shape) != 3:
            raise ValueError(f"expected a 3D volume (z, y, x), got shape {tuple(volume.shape)}")
        self.volume = volume
        self.shape: tuple[int, int, int] = tuple(int(s) for s in volume.shape)  # type: ignore[assignment]
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        if centre is None:
            detection = detect_rings(volume)
            centre, fill = detection.centre, detection.fill if fill is None else fill
        self.centre = centre
        self.fill = fill
        self._annuli: _Annuli | None = None
        self._profiles: dict[int, npt.NDArray[np.float32]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        c = self.centre
        return f"RingCorrectedVolume(shape={self.shape}, centre=({c[0]:.2f}, {c[1]:.2f}))"

    def __getstate__(self) -> dict[str, Any]:
        return {"volume": self.volume, "centre": self.centre, "fill": self.fill}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["volume"], state["centre"], fill=state["fill"])  # type: ignore[misc]

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> npt.NDArray[Any]:
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    @property
    def annuli(self) -> _Annuli:
        if self._annuli is None:
            self._annuli = _Annuli.of(self.shape[1:], self.centre)
        return self._annuli

    def profile(self, z: int, plane: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """The ring profile of slice ``z`` (per radial bin), from ``plane`` if given (its raw voxels)."""
        with self._lock:
            cached = self._profiles.get(z)
        if cached is not None:
            return cached
        if plane is None:
            plane = np.asarray(self.volume[z])
        prof = ring_profile(plane, self.annuli, fill=self.fill)
        with self._lock:
            self._profiles[z] = prof
        return prof

    def __getitem__(self, key: Any) -> npt.NDArray[np.float32]:
        slices, squeeze = _as_slices(key, self.shape)
        out = np.array(self.volume[slices], dtype=np.float32)  # a copy: never the caller's data
        zs = range(*slices[0].indices(self.shape[0]))
        ys, xs = (np.arange(*s.indices(n)) for s, n in zip(slices[1:], self.shape[1:], strict=True))
        whole_plane = len(ys) == self.shape[1] and len(xs) == self.shape[2]
        bins = self.annuli.bins[np.ix_(ys, xs)]
        for i, z in enumerate(zs):
            prof = self.profile(z, out[i] if whole_plane else None)
            if self.fill is None:
                out[i] -= prof[bins]
            else:  # the field of view's outside keeps its constant
                out[i] -= np.where(out[i] == self.fill, np.float32(0), prof[bins])
        return out.reshape([n for n, sq in zip(out.shape, squeeze, strict=True) if not sq])


def _as_slices(key: Any, shape: tuple[int, ...]) -> tuple[tuple[slice, slice, slice], list[bool]]:
    """A 3-tuple of slices for ``key`` (ints, slices, one Ellipsis) and which axes an int dropped."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (len(shape) - len(key) + 1) + key[at + 1 :]
    key = key + (slice(None),) * (len(shape) - len(key))
    if len(key) != len(shape):
        raise IndexError(f"too many indices for a volume of shape {shape}: {key!r}")
    slices: list[slice] = []
    squeeze: list[bool] = []
    for k, n in zip(key, shape, strict=True):
        if isinstance(k, slice):
            slices.append(k)
            squeeze.append(False)
        elif isinstance(k, (int, np.integer)):
            i = int(k) + n if k < 0 else int(k)
            if not 0 <= i < n:
                raise IndexError(f"index {int(k)} is out of bounds for size {n}")
            slices.append(slice(i, i + 1))
            squeeze.append(True)
        else:
            raise TypeError(f"ring-corrected volumes take ints and slices, got {type(k).__name__}")
    return (slices[0], slices[1], slices[2]), squeeze
