"""Local thickness of a phase: at every voxel, the diameter of the largest sphere inside the phase
that covers it (Hildebrand & Rüegsegger 1997; PoreSpy's ``local_thickness``, BoneJ's Thickness).

labels == phase -> Euclidean distance transform (scipy.ndimage, voxel size as sampling) -> sphere
centres reduced to the distance ridge (a centre whose sphere lies inside a neighbour's is dropped)
-> spheres painted largest-radius-wins, one offset of the ball at a time over all centres big enough
for it -> thickness map -> :class:`LocalThickness` (volume-weighted distribution, mean, median).

Exact for real-valued radii (no rounding of radii to whole voxels as in PoreSpy's default). The
volume is processed in memory (about 13 bytes per voxel at the peak, plus the distance transform's
own work arrays); beyond ``max_memory`` the measure refuses and suggests a crop.
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
    "DEFAULT_MAX_MEMORY",
    "LocalThickness",
    "iter_local_thickness",
    "local_thickness",
    "thickness_map",
]

#: Default memory budget (4 GiB); the peak is about 30 bytes per voxel with scipy's work arrays.
DEFAULT_MAX_MEMORY = 4 * 2**30
_BYTES_PER_VOXEL = 30
STEP = "local thickness"
# Cost model (nanoseconds, measured on a 2-core CPU) to choose between painting balls and a distance
# transform per radius.
_PAINT_NS = 12.0
_OFFSET_NS = 4000.0
_EDT_NS = 350.0


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
    sphere that covers it. Radii are visited largest first; for each, the voxels within ``R`` of
    the admissible centres are found with one Euclidean distance transform of the centres
    (scipy.ndimage) restricted to their bounding box grown by ``R``; the first (largest) radius
    to reach a voxel is kept. The smallest sphere (``R = h``) covers only its centre, so every
    voxel of the phase gets a thickness of at least ``2h``. Balls leave the volume through its
    faces without being cut (as in PoreSpy and BoneJ).
    """
    inside = np.asarray(inside, dtype=bool)
    if inside.ndim != 3:
        raise ValueError(f"inside must be 3D, got shape {inside.shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    h = float(sp.min())
    out = np.zeros(inside.shape, dtype=np.float32)
    if not inside.any():
        return out
    dt = ndimage.distance_transform_edt(inside, sampling=sp).astype(np.float32)
    k_max = int(np.floor(float(dt.max()) / h + 1e-6))
    # Sphere radius index k per voxel (0: not reached yet), padded so that ball offsets painted
    # from a centre never leave the array or wrap a row.
    pad = np.ceil(k_max * h / sp).astype(int) + 1
    level = np.zeros(
        tuple(int(n + 2 * p) for n, p in zip(inside.shape, pad, strict=True)), np.uint16
    )
    core = level[tuple(slice(p, p + n) for p, n in zip(pad, inside.shape, strict=True))]
    strides = np.array([level.shape[1] * level.shape[2], level.shape[2], 1], dtype=np.int64)
    flat_level = level.reshape(-1)
    for k in range(k_max, 1, -1):
        check_cancel(cancel, "measuring local thickness")
        radius = k * h
        centres = dt >= np.float32(radius - 1e-6 * h)
        box = ndimage.find_objects(centres.view(np.uint8))
        if not box or box[0] is None:
            continue
        grow = np.ceil(radius / sp).astype(int)
        # Clusters of centres far apart would share one huge bounding box: treat each alone.
        labelled, _n_clusters = ndimage.label(centres[box[0]])
        for sub in ndimage.find_objects(labelled):
            if sub is None:
                continue
            region = tuple(
                slice(max(0, b.start + s.start - g), min(n, b.start + s.stop + g))
                for b, s, g, n in zip(box[0], sub, grow, inside.shape, strict=True)
            )
            _cover(centres[region], region, k, radius, sp, core, flat_level, pad, strides)
    core[core == 0] = 1
    np.multiply(core, np.float32(2.0 * h), out=out, casting="unsafe")
    out[~inside] = 0.0
    return out


def _cover(
    c: npt.NDArray[np.bool_],
    region: tuple[slice, ...],
    k: int,
    radius: float,
    sp: npt.NDArray[np.float64],
    core: npt.NDArray[np.uint16],
    flat_level: npt.NDArray[np.uint16],
    pad: npt.NDArray[np.int_],
    strides: npt.NDArray[np.int64],
) -> None:
    """Give level ``k`` to the voxels of ``region`` within ``radius`` of the centres ``c`` that
    have no level yet."""
    # Two exact ways to find the voxels within R of the centres; take the cheaper. The union of
    # balls around a set is the set plus the balls around its surface voxels, so painting costs
    # (surface voxels x ball offsets); a distance transform costs the region's voxels.
    surface = c & ~ndimage.binary_erosion(c, border_value=1)
    offsets = _ball_offsets(radius, sp)
    n_surface = int(np.count_nonzero(surface))
    paint_cost = n_surface * len(offsets) * _PAINT_NS + len(offsets) * _OFFSET_NS
    target = core[region]
    if paint_cost < c.size * _EDT_NS:
        target[c & (target == 0)] = k
        zz, yy, xx = np.nonzero(surface)
        starts = [r.start + p for r, p in zip(region, pad, strict=True)]
        flat = (
            (zz + starts[0]) * strides[0]
            + (yy + starts[1]) * strides[1]
            + (xx + starts[2]) * strides[2]
        )
        value = np.uint16(k)
        for off in offsets @ strides:
            idx = flat + off
            # levels are visited largest first, so an unpainted voxel takes this one
            flat_level[idx[flat_level[idx] == 0]] = value
    else:
        near = ndimage.distance_transform_edt(~c, sampling=sp) < radius
        target[near & (target == 0)] = k


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
    need = _BYTES_PER_VOXEL * int(np.prod(shape))
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
