"""Local thickness of a phase: at every voxel, the diameter of the largest sphere inside the phase
that covers it (Hildebrand & Rüegsegger 1997; PoreSpy's ``local_thickness``, BoneJ's Thickness).

labels == phase -> its bounding box -> largest whole radius that fits at each voxel (exact squared
Euclidean distance by separable min-plus passes, on uint8 where the distances allow) -> sphere centres
reduced to those whose ball is not inside a neighbour's -> balls painted largest radius first, per
radius either voxel by voxel (few centres) or as shifted rows over the centres' box (many) -> thickness
map -> :class:`LocalThickness` (volume-weighted distribution, mean, median).

The map is voxel for voxel PoreSpy's default (whole-voxel radii, open balls). The volume is processed
in memory (:data:`BYTES_PER_VOXEL` at the peak); beyond ``max_memory`` the measure refuses and
suggests a crop.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from napari_tomoseg.core.measure.inputs import (
    MeasureProgress,
    check_cancel,
    check_ids,
    check_labels,
    json_number,
    phase_id,
)
from napari_tomoseg.core.measure.units import Units
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import CancelToken, run_to_completion

__all__ = [
    "BYTES_PER_VOXEL",
    "DEFAULT_MAX_MEMORY",
    "LocalThickness",
    "iter_local_thickness",
    "local_thickness",
    "thickness_map",
]

#: Default memory budget of :func:`iter_local_thickness` (4 GiB).
DEFAULT_MAX_MEMORY = 4 * 2**30
#: Peak memory per voxel of the volume (labels not counted): the phase mask, the float32 map and
#: the distance passes' three arrays, or scipy's distance transform for very thick phases.
BYTES_PER_VOXEL = 30
STEP = "local thickness"
# Cost model (nanoseconds, measured on a 2-core CPU) to choose, per radius, between painting every
# ball voxel by index and or-ing the ball's rows over the centres' box.
_INDEX_NS = 10.0  # per ball voxel painted by index
_ROW_NS = 0.1  # per voxel of a box, per row of the ball or-ed in


@dataclass(frozen=True, eq=False)
class LocalThickness:
    """The local thickness of one phase: its distribution over the phase's voxels and its mean.

    Attributes
    ----------
    phase : str
    units : Units
    voxels : int
        Voxels of the phase (0: empty phase, see :attr:`note`).
    mean, median, maximum : float or None
        Volume-weighted (every voxel counts once) statistics of the thickness, in
        ``units.length``; None for an empty phase.
    edges : ndarray, shape (n + 1,)
        Histogram bin edges in ``units.length``.
    volume_fraction : ndarray, shape (n,)
        Fraction of the phase's voxels in each bin.
    map : ndarray of float32, shape (z, y, x), or None
        The thickness at every voxel (0 outside the phase), when asked for with ``keep_map``.
    """

    phase: str
    units: Units
    voxels: int
    mean: float | None
    median: float | None
    maximum: float | None
    edges: npt.NDArray[np.float64]
    volume_fraction: npt.NDArray[np.float64]
    map: npt.NDArray[np.float32] | None = None

    @property
    def note(self) -> str:
        return f"empty: no voxel of phase {self.phase!r}" if self.voxels == 0 else ""

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per histogram bin (unit in the keys)."""
        u = self.units.length
        return [
            {
                "phase": self.phase,
                f"thickness from ({u})": float(self.edges[i]),
                f"thickness to ({u})": float(self.edges[i + 1]),
                "volume fraction": float(self.volume_fraction[i]),
            }
            for i in range(len(self.volume_fraction))
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "units": self.units.to_dict(),
            "voxels": self.voxels,
            "mean": self.mean,
            "median": self.median,
            "maximum": self.maximum,
            "note": self.note,
            "edges": self.edges.tolist(),
            "volume_fraction": self.volume_fraction.tolist(),
        }


def thickness_map(
    inside: npt.NDArray[np.bool_],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    cancel: CancelToken | None = None,
) -> npt.NDArray[np.float32]:
    """The local thickness (sphere diameter) at every voxel of ``inside``, 0 elsewhere.

    Parameters
    ----------
    inside : ndarray of bool, shape (z, y, x)
    spacing : (z, y, x)
        Voxel edge lengths; the result is in the same unit.
    cancel : CancelToken, optional
        Checked between radii.

    Notes
    -----
    Radii are whole multiples ``R = k h`` of the smallest voxel edge ``h``, as in PoreSpy's
    default ``local_thickness``: a sphere of radius ``R`` fits at a voxel ``c`` when the
    distance from ``c`` to the nearest voxel outside the phase is at least ``R``, and it covers
    the voxels closer than ``R`` to ``c``. The thickness at ``x`` is ``2R`` for the largest such
    sphere that covers it; every voxel of the phase has at least ``2h`` (its own smallest
    sphere). Balls leave the volume through its faces without being cut (as in PoreSpy and
    BoneJ).

    The work is limited to the phase's bounding box. There, the largest radius ``k(c)`` that fits
    at each voxel comes from an exact squared Euclidean distance transform by three separable
    min-plus passes over a window that grows until no distance is cut by it (scipy's full
    transform for very thick phases). A voxel whose ball lies inside a neighbour's is dropped.
    The balls of each radius are then painted at once, largest radius first: for few centres
    every ball voxel by its index, for many the centres' box on boolean arrays (the centres
    dilated along x by each row half-width of the ball, the rows or-ed in as shifted copies),
    whichever a cost model says is cheaper.
    """
    inside = np.asarray(inside, dtype=bool)
    if inside.ndim != 3:
        raise ValueError(f"inside must be 3D, got shape {inside.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    out = np.zeros(inside.shape, dtype=np.float32)
    found = ndimage.find_objects(inside.view(np.uint8))
    if not found or found[0] is None:
        return out
    # The bounding box grown by one voxel: past it every voxel is outside the phase, so the
    # grown face holds an outside voxel nearer than any beyond it.
    box = tuple(
        slice(max(0, s.start - 1), min(n, s.stop + 1))
        for s, n in zip(found[0], inside.shape, strict=True)
    )
    sub = inside[box]
    h = float(sp.min())
    level = _radius_levels(sub, sp / h, cancel)
    lt = _paint_balls(level, sp / h, cancel)
    np.multiply(lt, np.float32(2.0 * h), out=out[box], casting="unsafe")
    return out


def _shifted(axis: int, d: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices ``(dst, src)`` so that ``a[dst]`` is ``a[src]`` moved by ``d`` along ``axis``."""
    dst: list[slice] = [slice(None)] * 3
    src: list[slice] = [slice(None)] * 3
    dst[axis], src[axis] = (
        (slice(d, None), slice(None, -d)) if d > 0 else (slice(None, d), slice(-d, None))
    )
    return tuple(dst), tuple(src)


def _radius_levels(
    inside: npt.NDArray[np.bool_], sp: npt.NDArray[np.float64], cancel: CancelToken | None
) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """``k(c) = floor(dt(c) / h)`` at every voxel (0 outside), ``sp`` in units of ``h``."""
    isotropic = bool(np.all(sp == 1.0))
    window = 8
    while True:
        # Min-plus passes of the squared distance over offsets up to ``window`` along each axis
        # (x, y, then z). The result is exact where it is at most window²: a nearest outside
        # voxel farther along one axis than the window is farther than the window.
        reach = np.ceil(window / sp - 1e-9).astype(int)
        cap = window**2 + 1  # "farther than the window"; cap + window² must fit the dtype
        dtype: Any = np.float32
        if isotropic:
            dtype = np.uint8 if cap + window**2 < 2**8 else np.uint16
        d2 = np.where(inside, dtype(cap), dtype(0))
        tmp = np.empty_like(d2)
        for axis in (2, 1, 0):
            check_cancel(cancel, "measuring local thickness")
            src = d2.copy()
            top = src.max()
            for d in range(1, min(int(reach[axis]), src.shape[axis] - 1) + 1):
                step = dtype((d * sp[axis]) ** 2)
                if step >= top:  # no squared distance left that this offset could shorten
                    break
                for sign in (d, -d):
                    dst, frm = _shifted(axis, sign)
                    np.add(src[frm], step, out=tmp[dst])
                    np.minimum(d2[dst], tmp[dst], out=d2[dst])
                top = d2.max()
        if float(d2.max()) <= window**2:
            return _levels_of(d2)
        if window >= 64:  # very thick phase: scipy's full transform
            exact = ndimage.distance_transform_edt(inside, sampling=sp)
            exact *= exact
            return _levels_of(exact)
        window *= 2


def _levels_of(d2: npt.NDArray[Any]) -> npt.NDArray[np.uint8] | npt.NDArray[np.uint16]:
    """``floor(sqrt(d2) + 1e-6)`` by thresholds (squared distances in units of h²)."""
    top = float(d2.max())
    level = np.zeros(d2.shape, dtype=np.uint8 if top < 255**2 else np.uint16)
    k = 1
    while (k - 1e-6) ** 2 <= top:
        level += d2 >= d2.dtype.type((k - 1e-6) ** 2 if d2.dtype.kind == "f" else k * k)
        k += 1
    return level


def _paint_balls(
    level: npt.NDArray[Any], sp: npt.NDArray[np.float64], cancel: CancelToken | None
) -> npt.NDArray[Any]:
    """Largest radius index ``k`` of the balls ``|x - c| < k(c)`` that cover each voxel."""
    k_max = int(level.max())
    # Padded so that ball offsets painted from a centre never leave the array or wrap a row.
    pad = np.ceil(k_max / sp).astype(int) + 1
    padded = np.zeros(
        tuple(int(n + 2 * p) for n, p in zip(level.shape, pad, strict=True)), level.dtype
    )
    lt = padded[tuple(slice(p, p + n) for p, n in zip(pad, level.shape, strict=True))]
    lt[...] = level  # a voxel's own largest ball covers it
    keep = level >= 2  # a ball of radius h covers only its centre
    for axis in range(3):
        # The ball of c lies inside a neighbour's when the neighbour's radius is longer by at
        # least one voxel edge along that axis.
        more = int(np.ceil(sp[axis] - 1e-9))
        for sign in (1, -1):
            dst, src = _shifted(axis, sign)
            keep[dst] &= level[src] < level[dst] + more
    flat = np.flatnonzero(keep)
    radius_of = level.reshape(-1)[flat]
    del keep
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1], dtype=np.int64)
    flat_lt = padded.reshape(-1)
    for k in range(k_max, 1, -1):
        check_cancel(cancel, "measuring local thickness")
        coords = np.stack(np.unravel_index(flat[radius_of == k], level.shape), axis=1)
        if not len(coords):
            continue
        offsets = _ball_offsets(float(k), sp)
        rows = _ball_rows(offsets)
        grow = np.abs(offsets).max(axis=0)
        lo = np.maximum(coords.min(axis=0) - grow, 0)
        hi = np.minimum(coords.max(axis=0) + grow + 1, level.shape)
        # Two exact ways; take the cheaper: every ball voxel by index, or the whole box by rows.
        sparse_cost = len(coords) * len(offsets) * _INDEX_NS
        dense_cost = float(np.prod(hi - lo)) * (len(rows) + 3 * int(grow[2])) * _ROW_NS
        value = level.dtype.type(k)
        if sparse_cost < dense_cost:
            idx = ((coords + pad) @ strides)[:, None] + (offsets @ strides)[None, :]
            idx = idx.reshape(-1)
            # radii are visited largest first: a voxel below k takes k
            flat_lt[idx[flat_lt[idx] < value]] = value
            continue
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        run = np.zeros(tuple(int(n) for n in hi - lo), dtype=bool)
        run[tuple((coords - lo).T)] = True
        covered = np.zeros_like(run)
        wider = np.empty_like(run)
        w_done = 0
        for dz, dy, w in rows:  # sorted by half-width
            while w_done < w:  # centres dilated along x by one more voxel each way
                np.copyto(wider, run)
                wider[..., 1:] |= run[..., :-1]
                wider[..., :-1] |= run[..., 1:]
                run, wider = wider, run
                w_done += 1
            zy = run.shape[:2]
            dst = tuple(slice(max(0, d), n + min(0, d)) for d, n in zip((dz, dy), zy, strict=True))
            src = tuple(
                slice(max(0, -d), n + min(0, -d)) for d, n in zip((dz, dy), zy, strict=True)
            )
            covered[dst] |= run[src]
        target = lt[box]
        target[covered & (target < value)] = value
    return lt.copy()


def _ball_rows(offsets: npt.NDArray[np.int64]) -> list[tuple[int, int, int]]:
    """Rows ``(dz, dy, w)`` of a ball's offsets (``(dz, dy, -w..w)``), by increasing ``w``."""
    rows: dict[tuple[int, int], int] = {}
    for dz, dy, dx in offsets.tolist():
        rows[(dz, dy)] = max(rows.get((dz, dy), 0), abs(dx))
    return sorted(((dz, dy, w) for (dz, dy), w in rows.items()), key=lambda r: r[2])


def _ball_offsets(radius: float, sp: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Integer offsets ``(n, 3)`` shorter than ``radius`` (physical length)."""
    h = np.ceil(radius / sp).astype(int)
    grids = np.meshgrid(*(np.arange(-k, k + 1) for k in h), indexing="ij")
    off = np.stack([g.ravel() for g in grids], axis=1).astype(np.int64)
    return off[np.sqrt(((off * sp) ** 2).sum(axis=1)) < radius]


def iter_local_thickness(
    labels: Any,
    phase: str | int,
    *,
    phases: PhaseTable,
    voxel_size: Any = None,
    bins: int = 30,
    keep_map: bool = False,
    max_memory: int = DEFAULT_MAX_MEMORY,
    cancel: CancelToken | None = None,
) -> Generator[MeasureProgress, None, LocalThickness]:
    """Local thickness of ``phase``: its distribution over the phase's voxels and its mean.

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids 1..C (0 unlabelled); read whole into memory.
    phase : str or int
        Name or id of the phase (``"pore"`` for a pore-size distribution).
    phases : PhaseTable
    voxel_size : str, float, (z, y, x) or Units, optional
        In µm (anisotropic voxels are handled); without it thickness is in voxels.
    bins : int
        Histogram bins from 0 to the largest thickness.
    keep_map : bool
        Keep the thickness map (float32 volume) in the result.
    max_memory : int
        Budget in bytes; a volume needing more raises a ``ValueError`` suggesting a crop.
    cancel : CancelToken, optional

    Yields
    ------
    MeasureProgress
        Step ``"local thickness"``: 0, 1 and 2 of 2 (reading, computing, done).

    Returns
    -------
    LocalThickness
    """
    shape = check_labels(labels)
    pid = phase_id(phases, phase)
    name = phases.phases[pid - 1].name
    units = Units.of(voxel_size)
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise ValueError(f"bins must be a whole number >= 1, got {bins!r}")
    need = BYTES_PER_VOXEL * int(np.prod(shape))
    if need > max_memory:
        raise ValueError(
            f"local thickness of a {shape[0]}x{shape[1]}x{shape[2]} volume needs about "
            f"{need / 2**30:.1f} GiB, over the budget of {max_memory / 2**30:.1f} GiB; measure a "
            "crop of the volume or raise max_memory"
        )
    yield MeasureProgress(STEP, 0, 2)
    lab = np.asarray(labels)
    check_ids(lab, phases)
    inside = lab == pid
    del lab
    check_cancel(cancel, "measuring local thickness")
    yield MeasureProgress(STEP, 1, 2)
    lt = thickness_map(inside, units.spacing, cancel=cancel)
    values = lt[inside]
    if values.size:
        top = float(values.max())
        edges = np.linspace(0.0, top, int(bins) + 1)
        hist, _ = np.histogram(values, edges)
        frac = hist / values.size
        mean, median, maximum = (
            json_number(values.mean(dtype=np.float64)),
            json_number(np.median(values)),
            top,
        )
    else:
        edges = np.linspace(0.0, 1.0, int(bins) + 1)
        frac = np.zeros(int(bins))
        mean = median = maximum = None
    yield MeasureProgress(STEP, 2, 2)
    return LocalThickness(
        phase=name,
        units=units,
        voxels=int(values.size),
        mean=mean,
        median=median,
        maximum=maximum,
        edges=edges,
        volume_fraction=frac,
        map=lt if keep_map else None,
    )


def local_thickness(
    labels: Any, phase: str | int, *, phases: PhaseTable, **options: Any
) -> LocalThickness:
    """Run :func:`iter_local_thickness` to the end and return its result (same options)."""
    return run_to_completion(iter_local_thickness(labels, phase, phases=phases, **options))
