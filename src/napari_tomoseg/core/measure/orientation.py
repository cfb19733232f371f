"""Fibre orientation from the structure tensor: the orientation tensor ``a_ij`` of a fibre phase.

grey image (or the fibre phase's indicator) -> slabs along z with a halo -> Gaussian smoothing at the
noise scale, gradient, outer products smoothed at the integration scale (the structure tensor S)
-> at every fibre voxel, the fibre axis is the eigenvector of S with the smallest eigenvalue
-> ``a_ij = <p_i p_j>`` over fibre voxels (trace 1), whole volume and per block; principal
direction; distribution of angles to a chosen axis -> :class:`FibreOrientation`.

Memory grows with one slab (block thickness plus halo, whole y-x slices), not with the volume.
"""

from __future__ import annotations

import math
from collections.abc import Generator
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
    check_same_shape,
    json_number,
    phase_id,
)
from napari_tomoseg.core.measure.units import AXES, Units, parse_axis
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import CancelToken, run_to_completion

__all__ = ["FibreOrientation", "fibre_orientation", "iter_fibre_orientation"]

STEP = "orientation"
#: Gaussian filters are truncated at this many sigmas (also sets the halo of each slab).
TRUNCATE = 3.0


@dataclass(frozen=True, eq=False)
class FibreOrientation:
    """The orientation of one (fibre) phase. Tensors and directions are in (z, y, x) order.

    Attributes
    ----------
    phase : str
    units : Units
    source : {"image", "labels"}
        Whether the structure tensor was computed on the grey image or on the phase's indicator.
    noise_scale, integration_scale : float
        Gaussian sigmas in ``units.length``.
    voxels : int
        Fibre voxels averaged (0: empty phase, then the tensor is all NaN and :attr:`note` says so).
    tensor : ndarray, shape (3, 3)
        ``a_ij``: mean of ``p_i p_j`` over the fibre voxels (trace 1).
    eigenvalues : ndarray, shape (3,)
        Of ``tensor``, largest first.
    principal_direction : ndarray, shape (3,)
        Eigenvector of the largest eigenvalue (sign arbitrary; made to point to +z, else +y, +x).
    axis : {"z", "y", "x"}
        Reference axis of the angle distribution.
    angle_edges : ndarray, shape (n + 1,)
        Angle bins in degrees, 0..90.
    angle_fraction : ndarray, shape (n,)
        Fraction of fibre voxels whose local fibre axis makes an angle in each bin with ``axis``.
    block : int
        Block edge in voxels of the per-block tensors.
    block_origin : ndarray of int64, shape (m, 3)
        First voxel (z, y, x) of each block holding fibre.
    block_voxels : ndarray of int64, shape (m,)
    block_tensors : ndarray, shape (m, 3, 3)
    """

    phase: str
    units: Units
    source: str
    noise_scale: float
    integration_scale: float
    voxels: int
    tensor: npt.NDArray[np.float64]
    eigenvalues: npt.NDArray[np.float64]
    principal_direction: npt.NDArray[np.float64]
    axis: str
    angle_edges: npt.NDArray[np.float64]
    angle_fraction: npt.NDArray[np.float64]
    block: int
    block_origin: npt.NDArray[np.int64]
    block_voxels: npt.NDArray[np.int64]
    block_tensors: npt.NDArray[np.float64]

    @property
    def note(self) -> str:
        return f"empty: no voxel of phase {self.phase!r}" if self.voxels == 0 else ""

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per block: origin, fibre voxels and the six independent tensor components."""
        rows = []
        for i in range(len(self.block_voxels)):
            t = self.block_tensors[i]
            row: dict[str, Any] = {
                "phase": self.phase,
                "block z0": int(self.block_origin[i, 0]),
                "block y0": int(self.block_origin[i, 1]),
                "block x0": int(self.block_origin[i, 2]),
                "fibre voxels": int(self.block_voxels[i]),
            }
            for a in range(3):
                for b in range(a, 3):
                    row[f"a_{AXES[a]}{AXES[b]}"] = float(t[a, b])
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON; tensors as 3x3 nested lists in (z, y, x) order (None: undefined)."""

        def mat(m: npt.NDArray[np.float64]) -> list[list[float | None]]:
            return [[json_number(v) for v in row] for row in m]

        return {
            "phase": self.phase,
            "units": self.units.to_dict(),
            "source": self.source,
            "noise_scale": self.noise_scale,
            "integration_scale": self.integration_scale,
            "voxels": self.voxels,
            "note": self.note,
            "tensor": mat(self.tensor),
            "eigenvalues": [json_number(v) for v in self.eigenvalues],
            "principal_direction": [json_number(v) for v in self.principal_direction],
            "axis": self.axis,
            "angle_edges_deg": self.angle_edges.tolist(),
            "angle_fraction": self.angle_fraction.tolist(),
            "block": self.block,
            "blocks": [
                {
                    "origin": self.block_origin[i].tolist(),
                    "voxels": int(self.block_voxels[i]),
                    "tensor": mat(self.block_tensors[i]),
                }
                for i in range(len(self.block_voxels))
            ],
        }


def iter_fibre_orientation(
    labels: Any,
    phase: str | int = "fibre",
    *,
    phases: PhaseTable,
    image: Any = None,
    voxel_size: Any = None,
    fibre_radius: float | None = None,
    noise_scale: float | None = None,
    integration_scale: float | None = None,
    axis: str | int = "z",
    block: int = 64,
    angle_bins: int = 18,
    cancel: CancelToken | None = None,
) -> Generator[MeasureProgress, None, FibreOrientation]:
    """Orientation tensor of ``phase`` from the structure tensor, whole volume and per block.

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids; the fibre voxels (``labels == phase``) are those averaged. Read in slabs.
    phase : str or int
        The fibre phase (default ``"fibre"``).
    phases : PhaseTable
    image : array, shape (z, y, x), optional
        Grey volume: the structure tensor is computed on it (better for touching fibres). Without
        it, on the indicator of the phase (1 in the phase, 0 elsewhere).
    voxel_size : str, float, (z, y, x) or Units, optional
        In µm; scales are then in µm too.
    fibre_radius : float, optional
        In ``units.length``; sets the default integration scale. Default: 4 voxels (the smallest
        voxel edge times 4), a 10 µm glass fibre at 1.3 µm voxels.
    noise_scale : float, optional
        Sigma of the smoothing before the gradient; default one voxel (smallest edge).
    integration_scale : float, optional
        Sigma of the smoothing of the gradient products; default ``fibre_radius``, so that a
        fibre's whole cross-section informs each of its voxels.
    axis : {"z", "y", "x"}
        Reference axis of the angle distribution.
    block : int
        Edge in voxels of the blocks of the per-block tensors (also the slab thickness).
    angle_bins : int
        Bins of the angle histogram between 0 and 90 degrees.
    cancel : CancelToken, optional
        Checked between slabs.

    Yields
    ------
    MeasureProgress

    Returns
    -------
    FibreOrientation

    Raises
    ------
    ValueError
        Bad labels, image of another shape, unknown phase, bad axis, non-positive scales.
    """
    shape = check_labels(labels)
    check_same_shape(shape, image, "image")
    pid = phase_id(phases, phase)
    name = phases.phases[pid - 1].name
    ax = parse_axis(axis)
    units = Units.of(voxel_size)
    sp = np.asarray(units.spacing, dtype=np.float64)
    h = float(sp.min())
    radius = 4.0 * h if fibre_radius is None else float(fibre_radius)
    sn = h if noise_scale is None else float(noise_scale)
    si = radius if integration_scale is None else float(integration_scale)
    for what, v in (("fibre_radius", radius), ("noise_scale", sn), ("integration_scale", si)):
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{what} must be a positive length in {units.length}, got {v!r}")
    if not isinstance(block, (int, np.integer)) or block < 4:
        raise ValueError(f"block must be a whole number of voxels >= 4, got {block!r}")
    if not isinstance(angle_bins, (int, np.integer)) or angle_bins < 1:
        raise ValueError(f"angle_bins must be >= 1, got {angle_bins!r}")
    sigma_n = sn / sp
    sigma_i = si / sp
    halo = math.ceil(TRUNCATE * (sigma_n[0] + sigma_i[0])) + 2
    grid = tuple(-(-s // block) for s in shape)
    n_blocks = int(np.prod(grid))
    sums = np.zeros((n_blocks, 7), dtype=np.float64)  # voxels, zz, yy, xx, zy, zx, yx
    edges = np.linspace(0.0, 90.0, int(angle_bins) + 1)
    hist = np.zeros(int(angle_bins), dtype=np.int64)
    e_axis = np.eye(3)[ax]
    done = 0
    yield MeasureProgress(STEP, 0, shape[0])
    for a in range(0, shape[0], block):
        check_cancel(cancel, "measuring orientation")
        b = min(a + block, shape[0])
        lo, hi = max(0, a - halo), min(shape[0], b + halo)
        lab = np.asarray(labels[lo:hi])
        check_ids(lab, phases)
        fibre = lab == pid
        inner = fibre[a - lo : b - lo]
        if inner.any():
            grey = (
                fibre.astype(np.float32)
                if image is None
                else np.asarray(image[lo:hi]).astype(np.float32)
            )
            direction = _fibre_directions(grey, inner, a - lo, b - lo, sigma_n, sigma_i, sp)
            z, y, x = np.nonzero(inner)
            ids = ((z + a) // block * grid[1] + y // block) * grid[2] + x // block
            p = direction
            weights = (
                None,
                p[:, 0] * p[:, 0],
                p[:, 1] * p[:, 1],
                p[:, 2] * p[:, 2],
                p[:, 0] * p[:, 1],
                p[:, 0] * p[:, 2],
                p[:, 1] * p[:, 2],
            )
            for k, w in enumerate(weights):
                sums[:, k] += np.bincount(ids, weights=w, minlength=n_blocks)
            cos = np.clip(np.abs(p @ e_axis), 0.0, 1.0)
            hist += np.histogram(np.degrees(np.arccos(cos)), edges)[0]
        done = b
        yield MeasureProgress(STEP, done, shape[0])

    def tensor(row: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        n = row[0]
        if n == 0:
            return np.full((3, 3), np.nan)
        zz, yy, xx, zy, zx, yx = row[1:] / n
        return np.array([[zz, zy, zx], [zy, yy, yx], [zx, yx, xx]])

    total = sums.sum(axis=0)
    whole = tensor(total)
    if total[0] > 0:
        evals, evecs = np.linalg.eigh(whole)
        eigenvalues = np.asarray(evals[::-1], dtype=np.float64)
        principal = np.asarray(evecs[:, -1], dtype=np.float64)
        sign = next((float(np.sign(c)) for c in principal if abs(c) > 1e-12), 1.0)
        principal = principal * sign
    else:
        eigenvalues = np.full(3, np.nan)
        principal = np.full(3, np.nan)
    present = np.flatnonzero(sums[:, 0] > 0)
    origin = np.stack(np.unravel_index(present, grid), axis=1).astype(np.int64) * block
    n_fibre = int(total[0])
    return FibreOrientation(
        phase=name,
        units=units,
        source="labels" if image is None else "image",
        noise_scale=sn,
        integration_scale=si,
        voxels=n_fibre,
        tensor=whole,
        eigenvalues=eigenvalues,
        principal_direction=principal,
        axis=AXES[ax],
        angle_edges=edges,
        angle_fraction=hist / n_fibre if n_fibre else np.zeros(len(hist)),
        block=int(block),
        block_origin=origin,
        block_voxels=sums[present, 0].astype(np.int64),
        block_tensors=np.array([tensor(sums[i]) for i in present]).reshape(-1, 3, 3),
    )


def fibre_orientation(
    labels: Any, phase: str | int = "fibre", *, phases: PhaseTable, **options: Any
) -> FibreOrientation:
    """Run :func:`iter_fibre_orientation` to the end and return its result (same options)."""
    return run_to_completion(iter_fibre_orientation(labels, phase, phases=phases, **options))


def _fibre_directions(
    grey: npt.NDArray[np.float32],
    inner: npt.NDArray[np.bool_],
    a: int,
    b: int,
    sigma_n: npt.NDArray[np.float64],
    sigma_i: npt.NDArray[np.float64],
    sp: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Unit fibre axes ``(n, 3)`` at the voxels ``inner`` (slices ``a:b`` of the slab ``grey``)."""
    smooth = ndimage.gaussian_filter(grey, sigma_n, truncate=TRUNCATE)
    # Central differences of the pre-smoothed image: the same as Gaussian-derivative filters at
    # this scale, for one Gaussian pass instead of three.
    grads = np.gradient(smooth, *sp)
    del smooth
    mask = inner
    s = np.empty((int(np.count_nonzero(mask)), 3, 3), dtype=np.float64)
    for i in range(3):
        for j in range(i, 3):
            prod = ndimage.gaussian_filter(grads[i] * grads[j], sigma_i, truncate=TRUNCATE)
            s[:, i, j] = s[:, j, i] = prod[a:b][mask]
    _, vectors = np.linalg.eigh(s)
    return np.asarray(vectors[:, :, 0])
