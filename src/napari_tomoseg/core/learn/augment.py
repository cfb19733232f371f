"""Seeded augmentations: the dihedral group (8 in 2D, 48 in 3D) and intensity changes.

crop (C, *spatial) + labels (*spatial) -> same symmetry applied to both -> intensity jitter on the image.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt


def dihedral_transforms(ndim: int) -> list[tuple[tuple[int, ...], tuple[bool, ...]]]:
    """All (axis permutation, flips) pairs: 8 for ndim=2, 48 for ndim=3 (each a symmetry of the square/cube)."""
    return [
        (perm, flips)
        for perm in itertools.permutations(range(ndim))
        for flips in itertools.product((False, True), repeat=ndim)
    ]


def apply_dihedral(
    array: npt.NDArray[np.generic], perm: tuple[int, ...], flips: tuple[bool, ...]
) -> npt.NDArray[np.generic]:
    """Apply a symmetry to the last ``len(perm)`` axes of ``array`` (leading channel axes untouched)."""
    lead = array.ndim - len(perm)
    out = np.transpose(array, (*range(lead), *(lead + p for p in perm)))
    index = (slice(None),) * lead + tuple(
        slice(None, None, -1) if f else slice(None) for f in flips
    )
    return out[index]


def random_dihedral(
    image: npt.NDArray[np.float32], labels: npt.NDArray[np.generic], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.generic]]:
    """The same random symmetry of the square (cube) applied to a (C, *spatial) image and its labels."""
    transforms = dihedral_transforms(labels.ndim)
    perm, flips = transforms[int(rng.integers(len(transforms)))]
    image_t: npt.NDArray[np.float32] = apply_dihedral(image, perm, flips)  # type: ignore[assignment]
    return image_t, apply_dihedral(labels, perm, flips)


def random_intensity(
    image: npt.NDArray[np.float32],
    rng: np.random.Generator,
    *,
    scale: float = 0.15,
    shift: float = 0.1,
    noise: float = 0.03,
) -> npt.NDArray[np.float32]:
    """Contrast scaling, brightness shift and Gaussian noise on a normalised (0..1) image."""
    a = 1.0 + rng.uniform(-scale, scale)
    b = rng.uniform(-shift, shift)
    out = (image - 0.5) * a + 0.5 + b
    sigma = rng.uniform(0.0, noise)
    if sigma > 0:
        out = out + rng.normal(0.0, sigma, size=image.shape)
    return out.astype(np.float32)
