"""Objects of one phase (pores, particles, fibres): connected components and a table of their shapes.

labels == phase (read slab by slab) -> connected components (6 or 26 neighbours, scipy.ndimage.label)
-> per object, moments summed slab by slab with np.bincount: volume, equivalent diameter, bounding box,
centroid, inertia tensor -> principal lengths and elongation, border contact -> :class:`ObjectTable`
-> :meth:`ObjectTable.size_distribution` (number- and volume-weighted).

The components are found in one piece, in memory: about 5 bytes per voxel (a boolean phase mask and
int32 object ids). Beyond ``max_memory`` the measure refuses with an error that suggests a crop; it
does not label block by block and merge labels across block faces (objects that cross a crop's faces
are flagged by ``touches_border``, so a crop gives correct statistics for the objects inside it).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
    slab_ranges,
)
from napari_tomoseg.core.measure.units import Units
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import CancelToken, run_to_completion

__all__ = [
    "BYTES_PER_VOXEL",
    "DEFAULT_MAX_MEMORY",
    "ObjectTable",
    "SizeDistribution",
    "iter_objects",
    "measure_objects",
]

#: Memory the labelling needs per voxel: a boolean phase mask and int32 object ids.
BYTES_PER_VOXEL = 5
#: Default memory budget of :func:`iter_objects` (4 GiB: a 1024 x 1024 x 800 volume).
DEFAULT_MAX_MEMORY = 4 * 2**30
_SLAB_VOXELS = 1 << 24
STEP_LABEL = "objects: labelling"
STEP_MEASURE = "objects: measuring"


@dataclass(frozen=True, eq=False)
class SizeDistribution:
    """Histogram of equivalent diameters, by number of objects and by volume.

    Attributes
    ----------
    units : Units
    edges : ndarray, shape (n + 1,)
        Bin edges of the equivalent diameter in ``units.length``.
    number : ndarray of int64, shape (n,)
        Objects per bin.
    number_fraction, volume_fraction : ndarray, shape (n,)
        Fraction of the objects and of their total volume in each bin (zeros without objects).
    """

    units: Units
    edges: npt.NDArray[np.float64]
    number: npt.NDArray[np.int64]
    number_fraction: npt.NDArray[np.float64]
    volume_fraction: npt.NDArray[np.float64]

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per bin: edges (unit in the key), count, number and volume fractions."""
        u = self.units.length
        return [
            {
                f"diameter from ({u})": float(self.edges[i]),
                f"diameter to ({u})": float(self.edges[i + 1]),
                "objects": int(self.number[i]),
                "number fraction": float(self.number_fraction[i]),
                "volume fraction": float(self.volume_fraction[i]),
            }
            for i in range(len(self.number))
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": self.units.to_dict(),
            "edges": self.edges.tolist(),
            "objects": self.number.tolist(),
            "number_fraction": self.number_fraction.tolist(),
            "volume_fraction": self.volume_fraction.tolist(),
        }


@dataclass(frozen=True, eq=False)
class ObjectTable:
    """The connected objects of one phase and their shapes. Arrays have one row per object, in
    the order of their object ids (1..n in :attr:`labels`).

    Attributes
    ----------
    phases : PhaseTable
    units : Units
    phase : str
        The phase measured.
    connectivity : {6, 26}
    shape : (z, y, x)
    voxels : ndarray of int64, shape (n,)
    volume : ndarray, shape (n,)
        In ``units.volume``.
    equivalent_diameter : ndarray, shape (n,)
        Diameter of the sphere of the same volume, ``(6 V / pi) ** (1/3)``, in ``units.length``.
    bbox : ndarray of int64, shape (n, 6)
        ``z0, y0, x0, z1, y1, x1`` in voxels (stop exclusive).
    centroid : ndarray, shape (n, 3)
        ``(z, y, x)`` in ``units.length`` from the corner of the first voxel's centre.
    principal_lengths : ndarray, shape (n, 3)
        Full axis lengths, longest first, of the ellipsoid with the object's inertia tensor
        (``2 sqrt(5 lambda)`` for each eigenvalue ``lambda`` of the covariance of the voxel
        positions, each voxel counted as a small cube), in ``units.length``.
    elongation : ndarray, shape (n,)
        Longest over middle principal length (1 for a sphere, large for a fibre).
    touches_border : ndarray of bool, shape (n,)
        True when the object reaches a face of the volume (its true size is unknown).
    labels : ndarray of int32, shape (z, y, x), or None
        Object ids (0 elsewhere) when asked for with ``keep_labels``.
    """

    phases: PhaseTable
    units: Units
    phase: str
    connectivity: int
    shape: tuple[int, int, int]
    voxels: npt.NDArray[np.int64]
    volume: npt.NDArray[np.float64]
    equivalent_diameter: npt.NDArray[np.float64]
    bbox: npt.NDArray[np.int64]
    centroid: npt.NDArray[np.float64]
    principal_lengths: npt.NDArray[np.float64]
    elongation: npt.NDArray[np.float64]
    touches_border: npt.NDArray[np.bool_]
    labels: npt.NDArray[np.int32] | None = None

    def __len__(self) -> int:
        return len(self.voxels)

    @property
    def note(self) -> str:
        """``"empty: ..."`` when the phase has no voxel, else ``""``."""
        return f"empty: no voxel of phase {self.phase!r}" if len(self) == 0 else ""

    def size_distribution(
        self, bins: int | Sequence[float] = 20, *, exclude_border: bool = False
    ) -> SizeDistribution:
        """Number- and volume-weighted histogram of the equivalent diameter.

        Parameters
        ----------
        bins : int or sequence of float
            Number of equal bins from 0 to the largest diameter, or the bin edges in
            ``units.length``.
        exclude_border : bool
            Leave out objects that touch the volume's faces (their size is cut).
        """
        keep = ~self.touches_border if exclude_border else np.ones(len(self), dtype=bool)
        d = self.equivalent_diameter[keep]
        v = self.volume[keep]
        if isinstance(bins, (int, np.integer)):
            if bins < 1:
                raise ValueError(f"bins must be >= 1, got {bins}")
            top = float(d.max()) if d.size else 1.0
            edges = np.linspace(0.0, top, int(bins) + 1)
        else:
            edges = np.asarray(bins, dtype=np.float64)
            if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
                raise ValueError("bin edges must be at least two increasing numbers")
        number, _ = np.histogram(d, edges)
        weighted, _ = np.histogram(d, edges, weights=v)
        n, total = number.sum(), weighted.sum()
        return SizeDistribution(
            units=self.units,
            edges=edges,
            number=number.astype(np.int64),
            number_fraction=number / n if n else np.zeros(len(number)),
            volume_fraction=weighted / total if total else np.zeros(len(number)),
        )

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per object; lengths, volumes and positions carry their unit in the key."""
        u, vol = self.units.length, self.units.volume
        rows = []
        for i in range(len(self)):
            z0, y0, x0, z1, y1, x1 = (int(v) for v in self.bbox[i])
            rows.append(
                {
                    "object": i + 1,
                    "phase": self.phase,
                    "voxels": int(self.voxels[i]),
                    f"volume ({vol})": float(self.volume[i]),
                    f"equivalent diameter ({u})": float(self.equivalent_diameter[i]),
                    f"centroid z ({u})": float(self.centroid[i, 0]),
                    f"centroid y ({u})": float(self.centroid[i, 1]),
                    f"centroid x ({u})": float(self.centroid[i, 2]),
                    "bbox z0": z0,
                    "bbox y0": y0,
                    "bbox x0": x0,
                    "bbox z1": z1,
                    "bbox y1": y1,
                    "bbox x1": x1,
                    f"length 1 ({u})": float(self.principal_lengths[i, 0]),
                    f"length 2 ({u})": float(self.principal_lengths[i, 1]),
                    f"length 3 ({u})": float(self.principal_lengths[i, 2]),
                    "elongation": json_number(self.elongation[i]),
                    "touches border": bool(self.touches_border[i]),
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Summary, size distribution and the per-object table as JSON."""
        d = self.equivalent_diameter
        return {
            "phase": self.phase,
            "connectivity": self.connectivity,
            "units": self.units.to_dict(),
            "count": len(self),
            "count_inside": int(np.count_nonzero(~self.touches_border)),
            "mean_equivalent_diameter": json_number(d.mean()) if d.size else None,
            "volume_weighted_mean_diameter": json_number(
                (d * self.volume).sum() / self.volume.sum()
            )
            if d.size
            else None,
            "note": self.note,
            "size_distribution": self.size_distribution().to_dict(),
            "objects": self.to_rows(),
        }


def iter_objects(
    labels: Any,
    phase: str | int,
    *,
    phases: PhaseTable,
    connectivity: Literal[6, 26] = 26,
    voxel_size: Any = None,
    keep_labels: bool = False,
    max_memory: int = DEFAULT_MAX_MEMORY,
    cancel: CancelToken | None = None,
) -> Generator[MeasureProgress, None, ObjectTable]:
    """Find the connected objects of ``phase`` and measure each one.

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids 1..C (0 unlabelled); any array that slices like numpy, read in slabs.
    phase : str or int
        Name or id of the phase whose objects are measured (e.g. ``"pore"``).
    phases : PhaseTable
    connectivity : {6, 26}
        Voxels sharing a face (6) or also an edge or a corner (26) belong to one object.
    voxel_size : str, float, (z, y, x) or Units, optional
        In µm; without it lengths and volumes are in voxels.
    keep_labels : bool
        Keep the object ids (int32 volume) in the result, e.g. for a labels layer.
    max_memory : int
        Budget in bytes for the labelling (:data:`BYTES_PER_VOXEL` per voxel). A larger volume
        raises a ``ValueError`` that suggests measuring a crop; labels are not merged across
        blocks.
    cancel : CancelToken, optional
        Checked between slabs.

    Yields
    ------
    MeasureProgress

    Returns
    -------
    ObjectTable
        With no object (and a note) when the phase is empty.

    Raises
    ------
    ValueError
        Bad labels, an unknown phase, ids outside the table, a bad connectivity, or a volume
        over the memory budget.
    """
    shape = check_labels(labels)
    if connectivity not in (6, 26):
        raise ValueError(
            f"connectivity must be 6 (faces) or 26 (faces, edges, corners), got {connectivity!r}"
        )
    pid = phase_id(phases, phase)
    name = phases.phases[pid - 1].name
    units = Units.of(voxel_size)
    n_vox = int(np.prod(shape))
    need = BYTES_PER_VOXEL * n_vox
    if need > max_memory:
        raise ValueError(
            f"measuring objects of a {shape[0]}x{shape[1]}x{shape[2]} volume needs about "
            f"{need / 2**30:.1f} GiB, over the budget of {max_memory / 2**30:.1f} GiB; measure a "
            "crop of the volume (objects cut by its faces are flagged) or raise max_memory"
        )
    steps = slab_ranges(shape[0], max(1, _SLAB_VOXELS // max(1, shape[1] * shape[2])))
    total = 2 * n_vox
    done = 0
    yield MeasureProgress(STEP_LABEL, done, total)
    inside = np.empty(shape, dtype=bool)
    for a, b in steps:
        check_cancel(cancel, "measuring objects")
        lab = np.asarray(labels[a:b])
        check_ids(lab, phases)
        np.equal(lab, pid, out=inside[a:b])
        done += lab.size
        yield MeasureProgress(STEP_LABEL, done, total)
    structure = ndimage.generate_binary_structure(3, 1 if connectivity == 6 else 3)
    ids = np.empty(shape, dtype=np.int32)
    n = int(ndimage.label(inside, structure=structure, output=ids))
    del inside
    yield MeasureProgress(STEP_MEASURE, done, total)

    # Moments per object, summed slab by slab so that coordinates never exist for the whole volume.
    sums = np.zeros((10, n + 1), dtype=np.float64)
    sz, sy, sx = units.spacing
    for a, b in steps:
        check_cancel(cancel, "measuring objects")
        block = ids[a:b]
        flat = np.flatnonzero(block)
        if flat.size:
            obj = block.reshape(-1)[flat]
            z, y, x = np.unravel_index(flat, block.shape)
            pz, py, px = (z + a) * sz, y * sy, x * sx
            for k, w in enumerate(
                (None, pz, py, px, pz * pz, py * py, px * px, pz * py, pz * px, py * px)
            ):
                sums[k] += np.bincount(obj, weights=w, minlength=n + 1)
        done += block.size
        yield MeasureProgress(STEP_MEASURE, done, total)

    count = sums[0, 1:]
    safe = np.maximum(count, 1)
    mean = sums[1:4, 1:] / safe
    second = sums[4:7, 1:] / safe
    cross = sums[7:10, 1:] / safe
    cov = np.empty((n, 3, 3))
    for i in range(3):
        # a voxel is a cube, not a point: its own second moment is s² / 12 along each axis
        cov[:, i, i] = second[i] - mean[i] ** 2 + units.spacing[i] ** 2 / 12.0
    for (i, j), c in zip(((0, 1), (0, 2), (1, 2)), cross, strict=True):
        cov[:, i, j] = cov[:, j, i] = c - mean[i] * mean[j]
    eig = np.linalg.eigvalsh(cov)[:, ::-1] if n else np.zeros((0, 3))
    lengths = 2.0 * np.sqrt(5.0 * np.clip(eig, 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        elongation = np.where(
            lengths[:, 1] > 0, lengths[:, 0] / np.where(lengths[:, 1] > 0, lengths[:, 1], 1), np.nan
        )
    boxes = ndimage.find_objects(ids, max_label=n)
    bbox = np.array(
        [[s.start for s in box] + [s.stop for s in box] for box in boxes if box is not None],
        dtype=np.int64,
    ).reshape(n, 6)
    touches = np.any(bbox[:, :3] == 0, axis=1) | np.any(bbox[:, 3:] == np.asarray(shape), axis=1)
    volume = count * units.voxel_volume
    return ObjectTable(
        phases=phases,
        units=units,
        phase=name,
        connectivity=int(connectivity),
        shape=shape,
        voxels=count.astype(np.int64),
        volume=volume,
        equivalent_diameter=np.cbrt(6.0 * volume / np.pi),
        bbox=bbox,
        centroid=mean.T.copy(),
        principal_lengths=lengths,
        elongation=elongation,
        touches_border=touches,
        labels=ids if keep_labels else None,
    )


def measure_objects(
    labels: Any, phase: str | int, *, phases: PhaseTable, **options: Any
) -> ObjectTable:
    """Run :func:`iter_objects` to the end and return its table (same options)."""
    return run_to_completion(iter_objects(labels, phase, phases=phases, **options))
