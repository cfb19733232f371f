"""Intensity normalisation by robust percentiles, computed once per volume from a subsample.

volume (any int/float dtype) -> (low, high) = percentiles of a strided subsample -> (x - low) / (high - low).

Computing the range once per volume (never per tile or slab) keeps tiles consistent: per-tile
statistics put seams into the segmentation wherever the local histogram changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core.checks import NonFiniteError, check_finite


@dataclass(frozen=True)
class Normalization:
    """Map the ``low_percentile`` .. ``high_percentile`` grey range of a volume onto 0 .. 1.

    With ``ring_removal`` the CT ring artifacts of a volume are subtracted first (when it has any;
    see :mod:`napari_tomoseg.core.prep.rings`), in training as in inference: :meth:`prepare`.
    """

    method: str = "percentile"
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    ring_removal: bool = False

    def __post_init__(self) -> None:
        if self.method != "percentile":
            raise ValueError(f"Normalization.method must be 'percentile', got {self.method!r}")
        if not 0.0 <= self.low_percentile < self.high_percentile <= 100.0:
            raise ValueError(
                "Normalization needs 0 <= low_percentile < high_percentile <= 100, got "
                f"{self.low_percentile}, {self.high_percentile}"
            )

    def prepare(self, volume: Any, *, ring_removal: bool | None = None) -> Any:
        """The volume the network sees: ``volume`` itself, or a lazily ring-corrected view of it.

        ``ring_removal`` overrides the model's setting (None: keep it).
        """
        if not (self.ring_removal if ring_removal is None else ring_removal):
            return volume
        from napari_tomoseg.core.prep.rings import remove_rings

        return remove_rings(volume)

    def volume_range(self, volume: Any, *, max_samples: int = 4_000_000) -> tuple[float, float]:
        """The (low, high) grey values of ``volume`` (a numpy, memory-mapped or zarr array)."""
        return robust_range(
            volume, self.low_percentile, self.high_percentile, max_samples=max_samples
        )


def _subsample(volume: Any, max_samples: int) -> tuple[npt.NDArray[Any], int]:
    """The strided sample as a (slices, y, x) array and the z-step between its slices."""
    shape = volume.shape
    n = int(np.prod(shape))
    if n <= max_samples:
        return np.asarray(volume[...]), 1
    # Stride slices along z first (cheap for slice-stored formats), then in-plane.
    step_z = max(
        1,
        int(np.ceil(shape[0] / max(1, min(shape[0], max_samples // (shape[1] * shape[2]) or 64)))),
    )
    step_z = max(step_z, 1)
    slab = np.asarray(volume[::step_z])
    step = max(1, int(np.ceil((slab.size / max_samples) ** 0.5)))
    return slab[:, ::step, ::step], step_z


def subsample(volume: Any, max_samples: int = 4_000_000) -> npt.NDArray[Any]:
    """A regular strided subsample of at most about ``max_samples`` voxels (reads only those slices)."""
    return _subsample(volume, max_samples)[0].ravel()


def robust_range(
    volume: Any, low: float = 0.5, high: float = 99.5, *, max_samples: int = 4_000_000
) -> tuple[float, float]:
    """Percentiles ``low`` and ``high`` of the grey values of ``volume``, from a subsample.

    Raises
    ------
    NonFiniteError
        A ValueError naming the first sampled z-slice that holds NaN or inf.
    ValueError
        If the subsample is constant (nothing to normalise).
    """
    sample, step_z = _subsample(volume, max_samples)
    if sample.ndim == 3:
        check_finite(sample, z_step=step_z)
    values = sample.ravel().astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        raise NonFiniteError("volume", None)
    lo, hi = np.percentile(values, [low, high])
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        raise ValueError(f"volume is constant (all voxels {lo:g}); there is nothing to segment")
    return float(lo), float(hi)


def apply_range(block: npt.ArrayLike, low: float, high: float) -> npt.NDArray[np.float32]:
    """``(block - low) / (high - low)`` as float32 (values outside the range are kept, not clipped)."""
    out = np.asarray(block, dtype=np.float32)
    if out is block:
        out = out.copy()
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    return out
