"""Sparse annotations the way a user paints them: thin strokes through each phase, not whole slices.

labels of a slice -> per phase, the skeleton (medial lines) cut into short pieces -> pieces drawn at
random, widened to ``width`` and kept inside their phase, until ``fraction`` of the slice is annotated,
shared between the phases in proportion to their area with a floor so that rare phases get strokes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

__all__ = ["stroke_annotations"]

#: Longest piece of skeleton one stroke covers (pixels): long medial lines are cut so that the strokes
#: spread over the slice instead of one line taking a phase's whole share.
MAX_STROKE = 24


def _pieces(skeleton: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.intp]]:
    """The skeleton cut at its junctions and every ``MAX_STROKE`` pixels: flat indices per piece."""
    neighbours = ndi.convolve(skeleton.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant")
    branches = skeleton & (neighbours <= 3)  # itself + at most 2 neighbours: not a junction
    lab, n = ndi.label(branches, structure=np.ones((3, 3), bool))
    pieces: list[npt.NDArray[np.intp]] = []
    flat = lab.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, n + 2))
    for k in range(n):
        idx = order[bounds[k] : bounds[k + 1]]
        # along a branch the pixels are not ordered; cutting the sorted run still gives compact pieces
        pieces.extend(idx[i : i + MAX_STROKE] for i in range(0, idx.size, MAX_STROKE))
    junctions = np.flatnonzero(skeleton & ~branches)
    pieces.extend(junctions[i : i + 1] for i in range(junctions.size))
    return pieces


def stroke_annotations(
    labels: npt.ArrayLike,
    *,
    fraction: float = 0.1,
    width: int = 3,
    floor: float = 0.1,
    seed: int = 0,
) -> npt.NDArray[np.uint8]:
    """Thin strokes through every phase of a labelled slice, covering about ``fraction`` of it.

    What a user paints in a few seconds per phase, for benchmarks and tests of training on sparse
    annotations: lines along the middle of each phase region (its skeleton, so strokes stay clear of the
    interfaces, as a careful user's do), ``width`` pixels wide.

    Parameters
    ----------
    labels : array_like
        A 2D slice of phase ids (0 = nothing there, e.g. outside the field of view).
    fraction : float
        Share of the labelled pixels to annotate, in (0, 1].
    width : int
        Stroke width in pixels (odd).
    floor : float
        Smallest share of the annotated pixels a present phase gets (if its skeleton allows): phases get
        ``max(area share, floor)``, normalised.
    seed : int
        Which pieces of skeleton are drawn; the same seed gives the same strokes.

    Returns
    -------
    numpy.ndarray of uint8
        The slice's shape, 0 = not annotated, else the phase id.
    """
    from skimage.morphology import skeletonize

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be a 2D slice, got shape {lab.shape}")
    if lab.dtype.kind not in "ui":
        raise ValueError(f"labels must hold integer phase ids, got dtype {lab.dtype}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if width < 1 or width % 2 == 0:
        raise ValueError(f"width must be an odd number of pixels >= 1, got {width}")
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
    rng = np.random.default_rng(seed)
    phases = [int(p) for p in np.unique(lab) if p > 0]
    out = np.zeros(lab.shape, np.uint8)
    if not phases:
        return out
    areas = np.array([(lab == p).sum() for p in phases], np.float64)
    share = np.maximum(areas / areas.sum(), floor)
    target = fraction * areas.sum() * share / share.sum()
    brush = np.ones((width, width), bool)
    # each phase's reachable stroke pixels: the widened skeleton inside the phase
    stroked = {}
    for p in phases:
        mask = lab == p
        skeleton = skeletonize(mask)
        stroked[p] = (skeleton, mask, int((ndi.binary_dilation(skeleton, brush) & mask).sum()))
    # a phase whose skeleton cannot fill its share passes the rest on to the others, by area
    available = np.array([stroked[p][2] for p in phases], np.float64)
    short = target > available
    if short.any() and not short.all():
        spare = (target - available)[short].sum()
        weights = np.where(short, 0.0, share)
        target = np.minimum(target, available) + spare * weights / weights.sum()
    for p, want in zip(phases, target, strict=True):
        skeleton, mask, _ = stroked[p]
        pieces = _pieces(skeleton)
        chosen = np.zeros(lab.size, bool)
        painted = np.zeros(lab.shape, bool)
        for k in rng.permutation(len(pieces)):
            chosen[pieces[k]] = True
            # widen only around the new piece: a brush stamp of its bounding box
            rows, cols = np.unravel_index(pieces[k], lab.shape)
            r0, r1 = max(0, rows.min() - width), min(lab.shape[0], rows.max() + width + 1)
            c0, c1 = max(0, cols.min() - width), min(lab.shape[1], cols.max() + width + 1)
            box = chosen.reshape(lab.shape)[r0:r1, c0:c1]
            painted[r0:r1, c0:c1] |= ndi.binary_dilation(box, brush) & mask[r0:r1, c0:c1]
            if painted.sum() >= want:
                break
        out[painted] = p
    return out
