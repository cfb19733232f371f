"""Post-processing of phase labels: ring-artifact blobs, small objects and phase statistics.

labels -> :func:`find_blobs` (connected blobs of one phase, slice by slice) -> :class:`BlobTable`
:meth:`BlobTable.select` (area / aspect-ratio thresholds) -> :func:`reassign_blobs` -> new labels
labels -> :func:`remove_small_objects`, :func:`phase_statistics`, :func:`slice_fractions`

Ring artifacts and streaks show up in a prediction as large, elongated blobs of a rare phase (pores)
in single slices; real pores are small and round. The published workflow plotted every blob's area
against its aspect ratio and moved the large, elongated ones to the surrounding phase.

Everything here works slab by slab along the slicing axis, so memory stays bounded for big
(memory-mapped or zarr) volumes, and returns new arrays: the caller's labels are written only when
they are passed explicitly as ``out``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import Cancelled, CancelToken, run_to_completion

__all__ = [
    "BlobProgress",
    "BlobTable",
    "PhaseStatistics",
    "blob_mask",
    "find_blobs",
    "iter_find_blobs",
    "phase_statistics",
    "reassign_blobs",
    "remove_small_objects",
    "slice_fractions",
]

_log = logging.getLogger(__name__)

#: Voxels read and labelled at once (~128 MiB of int32 component ids at most).
_SLAB_VOXELS = 1 << 25
# Each pixel is a unit square, not a point: its own second moment (1/12 per axis) is added, so that
# a w x h rectangle has aspect ratio exactly w / h and a single pixel (or a 1-pixel line) has a
# finite one. This matches the usual "equivalent ellipse" of scikit-image's regionprops up to that
# correction (regionprops gives a 1-pixel line an infinite aspect ratio).
_PIXEL_MOMENT = 1.0 / 12.0


@dataclass(frozen=True)
class BlobProgress:
    """``done`` of ``total`` slices analysed, after ``elapsed`` seconds."""

    done: int
    total: int
    elapsed: float

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass(frozen=True, eq=False)
class BlobTable:
    """Connected blobs of one phase, found slice by slice; one row (array entry) per blob.

    Attributes
    ----------
    phase : int
        The phase id whose blobs these are.
    axis : int
        Slicing axis of the volume (0 = z).
    connectivity : {1, 2}
        1: pixels touching by an edge are connected (4-connectivity); 2: also by a corner (8).
    shape : tuple of int
        Shape of the analysed label volume.
    slice_index : ndarray of int64
        Index of the blob's slice along ``axis``.
    label : ndarray of int64
        Number of the blob inside its slice (1, 2, ... in raster order, as ``scipy.ndimage.label``
        numbers the components of that slice).
    area : ndarray of int64
        Pixels in the blob.
    centroid : ndarray of float64, shape (n, 2)
        Centre of mass in the slice's (row, column) coordinates.
    major_axis, minor_axis : ndarray of float64
        Axis lengths of the ellipse with the blob's second moments (pixels as unit squares).
    """

    phase: int
    axis: int
    connectivity: int
    shape: tuple[int, int, int]
    slice_index: npt.NDArray[np.int64]
    label: npt.NDArray[np.int64]
    area: npt.NDArray[np.int64]
    centroid: npt.NDArray[np.float64]
    major_axis: npt.NDArray[np.float64]
    minor_axis: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.area.size)

    @property
    def aspect_ratio(self) -> npt.NDArray[np.float64]:
        """Major over minor axis length (>= 1; a w x h rectangle gives max(w, h) / min(w, h))."""
        return self.major_axis / self.minor_axis

    def select(
        self,
        *,
        min_area: float = 0,
        min_aspect: float = 1.0,
        max_area: float | None = None,
        max_aspect: float | None = None,
    ) -> npt.NDArray[np.bool_]:
        """Boolean selection of the blobs with ``min_area <= area <= max_area`` and
        ``min_aspect <= aspect_ratio <= max_aspect`` (open upper bounds when None)."""
        if min_area < 0:
            raise ValueError(f"min_area must be >= 0 pixels, got {min_area}")
        if min_aspect < 1:
            raise ValueError(f"min_aspect must be >= 1 (1 = round), got {min_aspect}")
        for name, hi, lo in (
            ("max_area", max_area, min_area),
            ("max_aspect", max_aspect, min_aspect),
        ):
            if hi is not None and hi < lo:
                raise ValueError(f"{name} ({hi}) is smaller than its minimum ({lo})")
        aspect = self.aspect_ratio
        keep = (self.area >= min_area) & (aspect >= min_aspect)
        if max_area is not None:
            keep &= self.area <= max_area
        if max_aspect is not None:
            keep &= aspect <= max_aspect
        return keep

    def rows(self) -> list[dict[str, float | int]]:
        """One dict per blob (for CSV export and tables)."""
        aspect = self.aspect_ratio
        return [
            {
                "slice": int(self.slice_index[i]),
                "blob": int(self.label[i]),
                "area": int(self.area[i]),
                "aspect_ratio": float(aspect[i]),
                "major_axis": float(self.major_axis[i]),
                "minor_axis": float(self.minor_axis[i]),
                "centroid_row": float(self.centroid[i, 0]),
                "centroid_col": float(self.centroid[i, 1]),
            }
            for i in range(len(self))
        ]


@dataclass(frozen=True)
class PhaseStatistics:
    """Size of one phase in a label volume."""

    id: int
    name: str
    voxels: int
    fraction: float  # of the labelled (non-zero) voxels; NaN if none is labelled
    volume_um3: float | None  # voxels x voxel volume, when the voxel size is known


# --------------------------------------------------------------------------------------------
# helpers


def _check_labels(labels: Any, name: str = "labels") -> tuple[int, int, int]:
    shape = tuple(int(s) for s in getattr(labels, "shape", ()))
    if len(shape) != 3:
        raise ValueError(f"{name} must be a 3D (z, y, x) label volume, got shape {shape}")
    dtype = np.dtype(labels.dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype.kind == "b"):
        raise ValueError(f"{name} must hold integer phase ids (0 = none, 1..C), got dtype {dtype}")
    return shape[0], shape[1], shape[2]


def _check_axis(axis: int) -> int:
    if isinstance(axis, bool) or axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0 (z), 1 (y) or 2 (x), got {axis!r}")
    return int(axis)


def _structure(connectivity: int) -> npt.NDArray[np.bool_]:
    """A 3D structuring element that connects pixels inside a slice only (planar, axis 0)."""
    if connectivity not in (1, 2):
        raise ValueError(
            f"connectivity must be 1 (edges) or 2 (edges and corners), got {connectivity!r}"
        )
    s = np.zeros((3, 3, 3), dtype=bool)
    s[1] = ndimage.generate_binary_structure(2, connectivity)
    return s


def _slab_ranges(shape: tuple[int, int, int], axis: int) -> list[tuple[int, int]]:
    n = shape[axis]
    per_slice = max(1, int(np.prod(shape)) // max(n, 1))
    step = max(1, _SLAB_VOXELS // per_slice)
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _index(axis: int, a: int, b: int) -> tuple[slice, ...]:
    idx = [slice(None)] * 3
    idx[axis] = slice(a, b)
    return tuple(idx)


def _read_slab(labels: Any, axis: int, a: int, b: int) -> npt.NDArray[Any]:
    """Slices a..b along ``axis`` as a numpy array with the slicing axis first."""
    return np.moveaxis(np.asarray(labels[_index(axis, a, b)]), axis, 0)


def _check_phase(phase: int, name: str = "phase") -> int:
    if isinstance(phase, bool) or not isinstance(phase, (int, np.integer)) or not 1 <= phase <= 255:
        raise ValueError(f"{name} must be a phase id in 1..255 (0 means none), got {phase!r}")
    return int(phase)


# --------------------------------------------------------------------------------------------
# blobs


def iter_find_blobs(
    labels: Any,
    phase: int,
    *,
    axis: int = 0,
    connectivity: Literal[1, 2] = 2,
    cancel: CancelToken | None = None,
) -> Generator[BlobProgress, None, BlobTable]:
    """Find the connected blobs of ``phase`` in every slice along ``axis``, with area and shape.

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids (a numpy array or any lazily sliceable array: ``np.memmap``, zarr).
    phase : int
        The phase whose blobs to find (e.g. the pore phase).
    axis : {0, 1, 2}
        Slicing axis; blobs are 2D connected components inside each slice.
    connectivity : {1, 2}
        1: 4-connected pixels, 2: 8-connected (scikit-image's default for 2D).
    cancel : CancelToken, optional
        Checked between slabs; raises :class:`~napari_tomoseg.core.progress.Cancelled`.

    Yields
    ------
    BlobProgress
        After each slab of slices.

    Returns
    -------
    BlobTable
    """
    shape = _check_labels(labels)
    axis = _check_axis(axis)
    phase = _check_phase(phase)
    structure = _structure(connectivity)
    t0 = time.perf_counter()
    parts: list[tuple[npt.NDArray[Any], ...]] = []
    n_slices = shape[axis]
    for a, b in _slab_ranges(shape, axis):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("blob analysis stopped")
        slab = _read_slab(labels, axis, a, b)
        parts.append(_slab_blobs(slab == phase, structure, offset=a))
        yield BlobProgress(done=b, total=n_slices, elapsed=time.perf_counter() - t0)
    cols = [np.concatenate(c) if parts else np.empty(0) for c in zip(*parts, strict=True)]
    if not parts:
        cols = [np.empty(0, dtype=np.int64)] * 3 + [np.empty((0, 2))] + [np.empty(0)] * 2
    z, local, area, centroid, major, minor = cols
    return BlobTable(
        phase=phase,
        axis=axis,
        connectivity=int(connectivity),
        shape=shape,
        slice_index=z.astype(np.int64),
        label=local.astype(np.int64),
        area=area.astype(np.int64),
        centroid=centroid.reshape(-1, 2).astype(np.float64),
        major_axis=major.astype(np.float64),
        minor_axis=minor.astype(np.float64),
    )


def find_blobs(
    labels: Any,
    phase: int,
    *,
    axis: int = 0,
    connectivity: Literal[1, 2] = 2,
    cancel: CancelToken | None = None,
) -> BlobTable:
    """:func:`iter_find_blobs` run to completion."""
    return run_to_completion(
        iter_find_blobs(labels, phase, axis=axis, connectivity=connectivity, cancel=cancel)
    )


def _slab_blobs(
    mask: npt.NDArray[np.bool_], structure: npt.NDArray[np.bool_], *, offset: int
) -> tuple[npt.NDArray[Any], ...]:
    """Per-blob (slice, local number, area, centroid, major, minor) of a slab mask (slices first)."""
    comp, n = ndimage.label(mask, structure=structure)
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty, np.empty((0, 2)), np.empty(0), np.empty(0)
    zz, yy, xx = np.nonzero(comp)
    ids = comp[zz, yy, xx]
    yf, xf = yy.astype(np.float64), xx.astype(np.float64)
    k = n + 1
    area = np.bincount(ids, minlength=k)[1:].astype(np.int64)
    s_z = np.bincount(ids, zz.astype(np.float64), minlength=k)[1:]
    s_y = np.bincount(ids, yf, minlength=k)[1:]
    s_x = np.bincount(ids, xf, minlength=k)[1:]
    s_yy = np.bincount(ids, yf * yf, minlength=k)[1:]
    s_xx = np.bincount(ids, xf * xf, minlength=k)[1:]
    s_xy = np.bincount(ids, yf * xf, minlength=k)[1:]
    my, mx = s_y / area, s_x / area
    cyy = np.maximum(s_yy / area - my * my, 0.0) + _PIXEL_MOMENT
    cxx = np.maximum(s_xx / area - mx * mx, 0.0) + _PIXEL_MOMENT
    cxy = s_xy / area - my * mx
    half_sum = (cyy + cxx) / 2
    root = np.sqrt(((cyy - cxx) / 2) ** 2 + cxy**2)
    lam1 = half_sum + root
    lam2 = np.maximum(half_sum - root, _PIXEL_MOMENT)  # never below one pixel's own moment
    # Every voxel of a component lies in one slice (planar structure): its mean z is exact.
    z_local = np.rint(s_z / area).astype(np.int64)
    # ndimage.label numbers components in raster order, so the components of one slice are
    # consecutive and their order is the one a 2D labelling of that slice alone gives.
    first = np.r_[0, np.flatnonzero(np.diff(z_local)) + 1]
    starts = np.repeat(first, np.diff(np.r_[first, z_local.size]))
    local = np.arange(z_local.size, dtype=np.int64) - starts + 1
    return (
        z_local + offset,
        local,
        area,
        np.stack([my, mx], axis=1),
        4.0 * np.sqrt(lam1),
        4.0 * np.sqrt(lam2),
    )


def _selected_by_slice(
    blobs: BlobTable, selected: npt.ArrayLike
) -> dict[int, npt.NDArray[np.int64]]:
    sel = np.asarray(selected)
    if sel.dtype == bool:
        if sel.shape != (len(blobs),):
            raise ValueError(
                f"selection has {sel.shape[0] if sel.ndim else 0} entries but the blob table has "
                f"{len(blobs)} blobs; select with BlobTable.select or pass blob indices"
            )
        rows = np.flatnonzero(sel)
    else:
        rows = np.unique(sel.astype(np.int64).ravel())
        if rows.size and (rows[0] < 0 or rows[-1] >= len(blobs)):
            raise ValueError(
                f"blob indices must be in 0..{len(blobs) - 1}, got {rows.tolist()[:5]}"
            )
    out: dict[int, npt.NDArray[np.int64]] = {}
    for z in np.unique(blobs.slice_index[rows]):
        out[int(z)] = rows[blobs.slice_index[rows] == z]
    return out


def _slice_components(
    labels_slice: npt.NDArray[Any], blobs: BlobTable, z: int, rows: npt.NDArray[np.int64]
) -> npt.NDArray[np.int32]:
    """2D components of the blob phase in one slice, checked against the table."""
    comp, n = ndimage.label(
        labels_slice == blobs.phase, structure=_structure(blobs.connectivity)[1]
    )
    expected = int(np.count_nonzero(blobs.slice_index == z))
    areas = np.bincount(comp.ravel(), minlength=n + 1)
    if n != expected or not np.array_equal(areas[blobs.label[rows]], blobs.area[rows]):
        raise ValueError(
            f"the labels changed since the blobs were found (slice {z} along axis {blobs.axis} "
            f"now has {n} blobs of phase {blobs.phase}, the table {expected}); analyse them again"
        )
    return comp


def _iter_selected_slices(
    labels: Any, blobs: BlobTable, selected: npt.ArrayLike
) -> Generator[
    tuple[int, npt.NDArray[Any], npt.NDArray[np.int32], npt.NDArray[np.int64]], None, None
]:
    shape = _check_labels(labels)
    if shape != blobs.shape:
        raise ValueError(
            f"labels shape {shape} differs from the analysed shape {blobs.shape}; analyse these labels first"
        )
    for z, rows in _selected_by_slice(blobs, selected).items():
        idx: list[Any] = [slice(None)] * 3
        idx[blobs.axis] = z
        plane = np.asarray(labels[tuple(idx)])
        yield z, plane, _slice_components(plane, blobs, z, rows), rows


def blob_mask(labels: Any, blobs: BlobTable, selected: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """A uint8 volume that is 1 on the selected blobs and 0 elsewhere (to highlight them).

    Parameters
    ----------
    labels : array of int
        The labels the blobs were found in, unchanged since.
    blobs : BlobTable
        From :func:`find_blobs`.
    selected : array of bool (one per blob) or of int (blob indices)
        Which blobs.

    Raises
    ------
    ValueError
        If ``labels`` changed since the analysis (shape, or blobs in a selected slice).
    """
    out = np.zeros(blobs.shape, dtype=np.uint8)
    for z, _plane, comp, rows in _iter_selected_slices(labels, blobs, selected):
        idx: list[Any] = [slice(None)] * 3
        idx[blobs.axis] = z
        out[tuple(idx)] = np.isin(comp, blobs.label[rows])
    return out


def reassign_blobs(
    labels: Any,
    blobs: BlobTable,
    selected: npt.ArrayLike,
    to: int | None = None,
    *,
    out: npt.NDArray[Any] | None = None,
) -> npt.NDArray[Any]:
    """Give the selected blobs another phase; return the new labels.

    Parameters
    ----------
    labels : array of int
        The labels the blobs were found in, unchanged since.
    blobs : BlobTable
        From :func:`find_blobs`.
    selected : array of bool (one per blob) or of int (blob indices)
        Which blobs to reassign.
    to : int, optional
        The new phase id. None: each blob takes the phase most frequent on its border in its slice
        (ignoring 0 and its own phase; ties go to the lower id); a blob with no such neighbour is
        left as it is (logged).
    out : ndarray, optional
        Where to write the result; pass ``labels`` itself to edit in place. By default a copy is
        made and ``labels`` is never modified.

    Returns
    -------
    ndarray
        The new labels (``out`` when given).

    Raises
    ------
    ValueError
        If ``to`` equals the blobs' phase, or ``labels`` changed since the analysis.
    """
    if to is not None:
        to = _check_phase(to, "to")
        if to == blobs.phase:
            raise ValueError(
                f"the blobs already have phase {to}; choose another phase to move them to"
            )
    # Validate everything before writing anything.
    edits = list(_iter_selected_slices(labels, blobs, selected))
    if out is None:
        out = np.array(labels, copy=True)
    elif out is not labels:
        if tuple(out.shape) != blobs.shape:
            raise ValueError(f"out has shape {out.shape}, expected {blobs.shape}")
        out[...] = np.asarray(labels)
    structure2d = _structure(blobs.connectivity)[1]
    for z, plane, comp, rows in edits:
        idx: list[Any] = [slice(None)] * 3
        idx[blobs.axis] = z
        target = out[tuple(idx)]  # a view: writes go to `out`
        if to is not None:
            target[np.isin(comp, blobs.label[rows])] = to
            continue
        boxes = ndimage.find_objects(comp)
        for r in rows:
            local = int(blobs.label[r])
            box = boxes[local - 1]
            assert box is not None  # _slice_components checked the blob exists
            grown = tuple(
                slice(max(s.start - 1, 0), min(s.stop + 1, n))
                for s, n in zip(box, comp.shape, strict=True)
            )
            blob = comp[grown] == local
            ring = ndimage.binary_dilation(blob, structure=structure2d) & ~blob
            around = plane[grown][ring].astype(np.int64)
            around = around[(around != 0) & (around != blobs.phase)]
            if around.size == 0:
                _log.info("blob %d of slice %d has no neighbouring phase; left as it is", local, z)
                continue
            target[grown][blob] = int(np.argmax(np.bincount(around)))
    return out


# --------------------------------------------------------------------------------------------
# small objects and statistics


def remove_small_objects(
    labels: npt.ArrayLike,
    phase: int,
    min_size: int,
    to: int | None = None,
    *,
    connectivity: Literal[1, 2, 3] = 1,
) -> npt.NDArray[Any]:
    """Reassign 3D connected objects of ``phase`` smaller than ``min_size`` voxels; return new labels.

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids; not modified. Labelled whole in 3D: needs 4 bytes per voxel of extra memory.
    phase : int
        The phase whose small objects to remove (isolated misclassified voxels, specks).
    min_size : int
        Objects with fewer voxels are reassigned.
    to : int, optional
        Their new phase; None: the phase most frequent around each object (ignoring 0 and
        ``phase``; objects with no such neighbour stay).
    connectivity : {1, 2, 3}
        Voxels touching by faces (1), also edges (2), also corners (3).

    Returns
    -------
    ndarray
        A new label volume.
    """
    lab = np.asarray(labels)
    _check_labels(lab)
    phase = _check_phase(phase)
    if min_size < 1:
        raise ValueError(f"min_size must be >= 1 voxel, got {min_size}")
    if to is not None and _check_phase(to, "to") == phase:
        raise ValueError(f"to must differ from phase ({phase})")
    if connectivity not in (1, 2, 3):
        raise ValueError(f"connectivity must be 1, 2 or 3, got {connectivity!r}")
    structure = ndimage.generate_binary_structure(3, connectivity)
    comp, n = ndimage.label(lab == phase, structure=structure)
    out = lab.copy()
    if n == 0:
        return out
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    small = np.flatnonzero(sizes < min_size)
    small = small[small > 0]
    if to is not None:
        out[np.isin(comp, small)] = to
        return out
    boxes = ndimage.find_objects(comp)
    for obj in small:
        box = boxes[obj - 1]
        assert box is not None
        grown = tuple(
            slice(max(s.start - 1, 0), min(s.stop + 1, n_))
            for s, n_ in zip(box, comp.shape, strict=True)
        )
        blob = comp[grown] == obj
        ring = ndimage.binary_dilation(blob, structure=structure) & ~blob
        around = lab[grown][ring].astype(np.int64)
        around = around[(around != 0) & (around != phase)]
        if around.size:
            out[grown][blob] = int(np.argmax(np.bincount(around)))
    return out


def slice_fractions(
    labels: Any, n_phases: int, *, axis: int = 0, mask: Any = None
) -> npt.NDArray[np.float64]:
    """Fraction of each phase in every slice along ``axis`` (a porosity profile, for instance).

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids 0..C; 0 (not labelled / outside the mask) is left out of the fractions.
    n_phases : int
        C.
    axis : {0, 1, 2}
        The profile runs along this axis.
    mask : array of bool, optional
        Only voxels where it is true count.

    Returns
    -------
    ndarray of float64, shape (n_slices, C)
        Row ``i`` holds the fractions of phases 1..C in slice ``i``; NaN for a slice without labelled voxels.
    """
    shape = _check_labels(labels)
    axis = _check_axis(axis)
    if n_phases < 1:
        raise ValueError(f"n_phases must be >= 1, got {n_phases}")
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from labels shape {shape}")
    k = n_phases + 1
    counts = np.zeros((shape[axis], k), dtype=np.int64)
    for a, b in _slab_ranges(shape, axis):
        slab = _read_slab(labels, axis, a, b).astype(np.int64)
        if slab.size and (slab.min() < 0 or slab.max() > n_phases):
            raise ValueError(
                f"labels hold ids outside 0..{n_phases}; check that they use a table of {n_phases} phases"
            )
        if mask is not None:
            slab = np.where(_read_slab(mask, axis, a, b).astype(bool), slab, 0)
        rows = np.arange(b - a, dtype=np.int64)[:, None, None]
        counts[a:b] = np.bincount((rows * k + slab).ravel(), minlength=(b - a) * k).reshape(
            b - a, k
        )
    phase_counts = counts[:, 1:].astype(np.float64)
    total = phase_counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, phase_counts / np.where(total > 0, total, 1), np.nan)


def phase_statistics(
    labels: Any,
    phases: PhaseTable,
    *,
    voxel_size: Sequence[float] | None = None,
    mask: Any = None,
) -> list[PhaseStatistics]:
    """Voxel count, fraction of the labelled voxels and physical volume of every phase.

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids 0..C (0 is not counted).
    phases : PhaseTable
        Names for ids 1..C.
    voxel_size : (z, y, x) in micrometres, optional
        Gives volumes in µm³.
    mask : array of bool, optional
        Only voxels where it is true count.
    """
    n = len(phases)
    shape = _check_labels(labels)
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from labels shape {shape}")
    counts = np.zeros(n + 1, dtype=np.int64)
    for a, b in _slab_ranges(shape, 0):
        slab = np.asarray(labels[a:b]).astype(np.int64)
        if slab.size and (slab.min() < 0 or slab.max() > n):
            raise ValueError(
                f"labels hold ids outside 0..{n}; check that they use this table of {n} phases"
            )
        if mask is not None:
            slab = np.where(np.asarray(mask[a:b]).astype(bool), slab, 0)
        counts += np.bincount(slab.ravel(), minlength=n + 1)[: n + 1]
    total = int(counts[1:].sum())
    voxel_volume = None
    if voxel_size is not None:
        vs = [float(v) for v in voxel_size]
        if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
            raise ValueError(
                f"voxel_size must be three positive numbers (z, y, x) in µm, got {voxel_size}"
            )
        voxel_volume = vs[0] * vs[1] * vs[2]
    return [
        PhaseStatistics(
            id=p.id,
            name=p.name,
            voxels=int(counts[p.id]),
            fraction=counts[p.id] / total if total else float("nan"),
            volume_um3=None if voxel_volume is None else float(counts[p.id]) * voxel_volume,
        )
        for p in phases.phases
    ]
