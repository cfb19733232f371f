"""The cylindrical field of view of a reconstructed CT volume, as a mask.

volume -> a few slices across the rotation axis -> voxels that never change and equal the corner value
(what reconstruction writes outside the circle) -> the disc of equal area around their complement.

Voxels outside the field of view carry no information: segmentation leaves them at 0 and they are
excluded from Jaccard scores and phase fractions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

__all__ = ["FieldOfView", "detect_field_of_view"]


@dataclass(frozen=True)
class FieldOfView:
    """A disc in every slice across ``axis``: centre (row, col) and radius in voxels of that plane."""

    axis: int
    centre: tuple[float, float]
    radius: float
    shape: tuple[int, int, int]

    def disc(self) -> npt.NDArray[np.bool_]:
        """The 2D disc (the plane across ``axis``), True inside."""
        plane = [s for a, s in enumerate(self.shape) if a != self.axis]
        rr, cc = np.ogrid[: plane[0], : plane[1]]
        return (rr - self.centre[0]) ** 2 + (cc - self.centre[1]) ** 2 <= self.radius**2

    def mask(self) -> npt.NDArray[np.bool_]:
        """A read-only boolean volume (a broadcast view: no memory per slice), True inside."""
        return np.broadcast_to(np.expand_dims(self.disc(), self.axis), self.shape)

    @property
    def inside_fraction(self) -> float:
        return float(self.disc().mean())


def detect_field_of_view(
    volume: Any,
    *,
    axis: int = 0,
    n_slices: int = 16,
    margin: float = 2.0,
    min_outside_fraction: float = 0.01,
) -> FieldOfView | None:
    """Find the reconstruction circle of a CT volume, or None if the volume has no such border.

    Outside the circle, reconstructions write one constant value (often 0) in every slice. A pixel
    is outside if it equals the value in the corners in all of ``n_slices`` evenly spaced slices;
    the field of view is then the disc with the same area and centroid as the remaining pixels,
    shrunk by ``margin`` voxels (the rim of the circle is usually degraded).

    Parameters
    ----------
    volume
        (z, y, x) array-like (numpy, memory map, zarr, dask); only ``n_slices`` slices are read.
    axis
        The rotation axis (0 = z for usual scans).
    n_slices
        Slices sampled along ``axis``.
    margin
        Voxels removed from the radius.
    min_outside_fraction
        Below this fraction of constant pixels the volume is taken to have no circular border
        (already cropped to the specimen).

    Returns
    -------
    FieldOfView or None

    Raises
    ------
    ValueError
        If ``volume`` is not 3D or ``axis`` is not 0, 1 or 2.
    """
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3:
        raise ValueError(f"expected a 3D volume (z, y, x), got shape {shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    n = shape[axis]
    picks = np.unique(np.linspace(0, n - 1, num=min(n_slices, n)).round().astype(int))
    outside: npt.NDArray[np.bool_] | None = None
    for i in picks:
        index: list[Any] = [slice(None)] * 3
        index[axis] = int(i)
        plane = np.asarray(volume[tuple(index)])
        corners = np.array([plane[0, 0], plane[0, -1], plane[-1, 0], plane[-1, -1]])
        values, counts = np.unique(corners, return_counts=True)
        if counts.max() < 3:  # the corners disagree: no constant border in this slice
            return None
        border = values[np.argmax(counts)]
        same = plane == border
        outside = same if outside is None else outside & same
    assert outside is not None
    # Keep only the constant pixels connected to the image border (a pore inside the specimen may
    # be constant too).
    from scipy import ndimage

    lab, _ = ndimage.label(outside)
    edge_ids = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    outside = np.isin(lab, edge_ids[edge_ids > 0])
    if outside.mean() < min_outside_fraction:
        log.info("no constant border found: the whole volume is taken as the field of view")
        return None
    inside = ~outside
    area = int(inside.sum())
    if area == 0:
        return None
    rows, cols = np.nonzero(inside)
    radius = max(0.0, float(np.sqrt(area / np.pi)) - margin)
    return FieldOfView(axis, (float(rows.mean()), float(cols.mean())), radius, shape)
