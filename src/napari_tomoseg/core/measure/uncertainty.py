"""Where is the model least sure? Per-voxel uncertainty and a ranking of slices to annotate next.

probabilities (C, ...) -> entropy in [0, 1]  (+ disagreement between per-axis predictions)
-> mean per slice (masked voxels left out) -> n slices picked greedily by uncertainty x coverage
   (far from annotated and already picked slices, not at the volume's ends).
Correcting uncertain slices that nothing annotated yet covers teaches the model more than correcting
evenly spaced ones, or the most uncertain ones, which tend to lie side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core.model.modes import AXIS_NAMES
from napari_tomoseg.core.segment.outputs import entropy

__all__ = [
    "SliceScore",
    "SliceScoreAccumulator",
    "coverage_scale",
    "disagreement",
    "entropy",
    "rank_scores",
    "rank_slices",
    "slice_scores",
    "suggest_slices",
    "volume_uncertainty",
]


@dataclass(frozen=True)
class SliceScore:
    """A slice index along an axis and its mean uncertainty (0 = certain, 1 = uniform guess).

    ``coverage``: the factor in (0, 1] that :func:`rank_scores` weighed the score by when it picked the
    slice (near 0 next to an annotated slice, near 1 in the widest unannotated gap).
    """

    index: int
    score: float
    coverage: float = 1.0


def disagreement(predictions: Sequence[npt.ArrayLike]) -> npt.NDArray[np.float32]:
    """Fraction of predictions that differ from the per-voxel majority (0 = all agree).

    ``predictions`` are label volumes of one volume, e.g. the 2D model run along z, y and x: where they
    disagree the slice-wise view was ambiguous. With three predictions the values are 0, 1/3 or 2/3.
    """
    if len(predictions) < 2:
        raise ValueError("disagreement needs at least two predictions of the same volume")
    stack = np.stack([np.asarray(p) for p in predictions])
    n_labels = int(stack.max()) + 1
    votes = np.stack([(stack == k).sum(axis=0) for k in range(n_labels)])
    majority = votes.max(axis=0)
    return (1.0 - majority / np.float32(len(predictions))).astype(np.float32)


def _annotated_slices(annotations: npt.ArrayLike, axis: int) -> set[int]:
    a = np.asarray(annotations)
    other = tuple(i for i in range(a.ndim) if i != axis)
    return {int(i) for i in np.flatnonzero(np.any(a > 0, axis=other))}


def slice_scores(
    uncertainty: npt.ArrayLike,
    *,
    axis: int = 0,
    mask: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float64]:
    """Mean uncertainty of each slice along ``axis`` over the voxels inside ``mask`` (NaN if none)."""
    u = np.asarray(uncertainty, dtype=np.float32)
    if u.ndim != 3:
        raise ValueError(f"uncertainty must be a 3D volume, got shape {u.shape}")
    if not 0 <= axis < 3:
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    other = tuple(i for i in range(3) if i != axis)
    if mask is None:
        return u.mean(axis=other, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if m.shape != u.shape:
        raise ValueError(f"mask shape {m.shape} differs from the uncertainty shape {u.shape}")
    total = np.where(m, u, 0).sum(axis=other, dtype=np.float64)
    count = m.sum(axis=other)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def rank_slices(
    uncertainty: npt.ArrayLike,
    *,
    axis: int = 0,
    n: int = 3,
    annotations: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
    min_spacing: int | None = None,
    scale: float | None = None,
) -> list[SliceScore]:
    """The ``n`` slices along ``axis`` to annotate next, the most useful first.

    Each slice's mean uncertainty (:func:`slice_scores`) is weighed by how far it lies from the slices
    already annotated and from those already picked: see :func:`rank_scores` for the rule. Slices that
    hold annotations are never suggested.

    Parameters
    ----------
    uncertainty : array_like
        Per-voxel uncertainty in [0, 1], a 3D volume (e.g. :func:`volume_uncertainty`).
    axis : int
        Axis of the slices (0 = z).
    n : int
        How many slices to suggest.
    annotations : array_like, optional
        Labels of the volume's shape, 0 = not annotated: every slice holding a label counts as annotated.
    mask : array_like of bool, optional
        Voxels to average over (e.g. the field of view); slices with none are not suggested.
    min_spacing, scale :
        See :func:`rank_scores`.

    Returns
    -------
    list of SliceScore
        In the order picked; ``score`` is the slice's mean uncertainty, ``coverage`` the factor it was
        weighed by.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    scores = slice_scores(uncertainty, axis=axis, mask=mask)
    annotated: Sequence[int] = ()
    if annotations is not None:
        a = np.asarray(annotations)
        if a.shape != np.shape(uncertainty):
            raise ValueError(
                f"annotations shape {a.shape} differs from the volume shape {np.shape(uncertainty)}"
            )
        annotated = sorted(_annotated_slices(a, axis))
    return rank_scores(scores, n=n, skip=annotated, min_spacing=min_spacing, scale=scale)


def coverage_scale(n_slices: int, n: int, n_annotated: int) -> float:
    """The distance over which :func:`rank_scores`' coverage factor rises: ``n_slices / (2 (n + a))``.

    ``n + a`` slices (``n`` to pick, ``a`` annotated) spread evenly over ``n_slices`` are
    ``n_slices / (n + a)`` apart, so the farthest any slice can be from its nearest annotation is half
    that. A slice at this distance keeps ``1 - 1/e`` (63 %) of its uncertainty, a neighbour of an
    annotated slice about ``1 / scale``.
    """
    return n_slices / (2.0 * max(1, n + n_annotated))


def rank_scores(
    scores: npt.ArrayLike,
    *,
    n: int = 3,
    skip: Sequence[int] | npt.ArrayLike = (),
    min_spacing: int | None = None,
    scale: float | None = None,
) -> list[SliceScore]:
    """Pick ``n`` slices from per-slice uncertainty ``scores`` (>= 0, NaN = no score), greedily.

    Neighbouring slices look alike: a slice next to an annotated one teaches the model little that the
    annotated one has not. So each pick maximises the slice's uncertainty times a coverage factor

        value(i) = score(i) * (1 - exp(-d(i) / L)),

    the expected new information if what a slice teaches overlaps with a slice ``d`` away by
    ``exp(-d / L)``. ``d(i)`` is the distance to the nearest slice in ``skip`` (the annotated ones) or
    already picked; each pick becomes an anchor for the next, so the picks spread out. ``L`` is ``scale``
    (default :func:`coverage_scale`: half the spacing of the annotated plus the ``n`` new slices spread
    evenly), so the factor ranges from ~0 next to an anchor to ~1 in the widest gap.

    The volume's ends count as anchors at half weight: a slice ``j`` slices from an end is given
    ``d = 2 j + 1`` to it (the end slice itself ``d = 1``, like a neighbour of an annotated slice).
    An annotation covers slices on both sides, but near an end only one side has slices to cover;
    with ``2 j + 1`` the greedy choice approaches the evenly spread set that minimises the largest
    distance from any slice to its nearest annotation (ends half a spacing away from the first and
    last annotation). With no annotations and equal scores the first pick is the middle slice.

    The outermost slice at either end is suggested only when no other slice is left: the first and last
    slices of a reconstruction carry its worst artefacts (missing cone-beam data, the sample's cut
    faces, partial volume) and are often the most uncertain for that reason; an annotation there
    teaches the model the artefact rather than the material.

    Parameters
    ----------
    scores : array_like
        One uncertainty per slice (e.g. :func:`slice_scores` or a :class:`SliceScoreAccumulator`'s).
    n : int
        How many slices to pick (fewer if fewer are left).
    skip : sequence of int
        Annotated slices: never picked, and anchors of the coverage factor.
    min_spacing : int, optional
        Also never pick a slice within this many slices of an annotated or picked slice (default 0:
        the coverage factor alone keeps picks apart).
    scale : float, optional
        ``L`` above, in slices (> 0).

    Returns
    -------
    list of SliceScore
        In the order picked (``score``: the slice's score; ``coverage``: its factor when picked).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one value per slice, got shape {s.shape}")
    if np.any(s < 0):
        raise ValueError("scores must be >= 0 (an uncertainty per slice)")
    if scale is not None and not scale > 0:
        raise ValueError(f"scale must be > 0 slices, got {scale}")
    if min_spacing is not None and min_spacing < 0:
        raise ValueError(f"min_spacing must be >= 0, got {min_spacing}")
    length = s.shape[0]
    skipped = np.unique(np.asarray(skip, dtype=np.intp).ravel())
    if skipped.size and (skipped.min() < 0 or skipped.max() >= length):
        raise ValueError(f"slices to skip must lie in 0..{length - 1}")
    spacing = min_spacing or 0
    scale = scale or coverage_scale(length, n, skipped.size)
    index = np.arange(length)
    # distance to the nearest anchor: the ends at half weight, then annotated and picked slices
    distance = np.minimum(2 * index + 1, 2 * (length - 1 - index) + 1).astype(np.float64)
    open_ = ~np.isnan(s)

    def anchor(i: int) -> None:
        np.minimum(distance, np.abs(index - i), out=distance)
        open_[max(0, i - spacing) : i + spacing + 1] = False

    for i in skipped:
        anchor(int(i))
    ends = np.zeros(length, bool)
    ends[[0, -1]] = True
    chosen: list[SliceScore] = []
    while len(chosen) < n and open_.any():
        allowed = open_ & ~ends if (open_ & ~ends).any() else open_
        coverage = -np.expm1(-distance / scale)
        value = np.where(allowed, np.nan_to_num(s) * coverage, -1.0)
        # the best value; among equal values the better covered, then the lower index
        i = int(np.lexsort((index, -coverage, -value))[0])
        chosen.append(SliceScore(i, float(s[i]), float(coverage[i])))
        anchor(i)
    return chosen


class SliceScoreAccumulator:
    """Per-slice mean uncertainty along all three axes, accumulated block by block as a segmentation
    streams: ranking slices then needs neither the uncertainty map nor a pass over it.

    ``add(region, u)`` with ``u`` the uncertainty of ``volume[region]``; each voxel added once.
    ``scores(axis)`` equals :func:`slice_scores` of the assembled map (NaN where nothing was added).
    """

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 3:
            raise ValueError(f"shape must be 3D, got {self.shape}")
        self._sums = [np.zeros(s, np.float64) for s in self.shape]
        self._counts = [np.zeros(s, np.int64) for s in self.shape]

    def add(self, region: Sequence[slice], uncertainty: npt.ArrayLike) -> None:
        u = np.asarray(uncertainty, dtype=np.float32)
        if u.ndim != 3:
            raise ValueError(f"uncertainty block must be 3D, got shape {u.shape}")
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            self._sums[axis][region[axis]] += u.sum(axis=other, dtype=np.float64)
            self._counts[axis][region[axis]] += u.size // max(1, u.shape[axis])

    def scores(self, axis: int = 0) -> npt.NDArray[np.float64]:
        count = self._counts[axis]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, self._sums[axis] / np.maximum(count, 1), np.nan)


def volume_uncertainty(
    volume: Any,
    model: Any,
    *,
    mode: str | None = None,
    axis: int = 0,
    device: str = "auto",
    progress: Callable[[Any], None] | None = None,
    cancel: Any = None,
) -> npt.NDArray[np.float32]:
    """Per-voxel uncertainty of ``model`` on ``volume`` (float32 in [0, 1], the volume's shape).

    2D / 2.5D / 3D modes: the normalised entropy of the predicted probabilities. ``2d-3axes``: the mean
    of the entropy of the averaged probabilities and of the disagreement between the three axes' labels
    (slices that look different along z, y and x are where slice-wise prediction is unsure).
    """
    from napari_tomoseg.core.segment import InferenceConfig, Segmenter

    mode = mode or model.defaults.mode
    # One Segmenter (one predictor on the device); each pass below only changes mode and axis.
    segmenter = Segmenter(model, InferenceConfig(device=device))
    n = len(model.phases)
    probs = np.zeros((n, *np.shape(volume)), np.float32)

    def run(m: str, ax: str) -> npt.NDArray[np.uint8]:
        plan = segmenter.with_options(mode=m, axis=ax).plan(volume, probabilities=True)
        result = plan.segment(probabilities_out=probs, progress=progress, cancel=cancel)
        return np.asarray(result.labels)

    if mode != "2d-3axes":
        run(mode, AXIS_NAMES[axis] if mode in ("2d", "2.5d") else model.defaults.axis)
        return entropy(probs)
    labels, mean = [], np.zeros_like(probs)
    for ax in AXIS_NAMES:
        labels.append(run("2d", ax))
        mean += probs / 3
    return np.float32(0.5) * (entropy(mean) + disagreement(labels))


def suggest_slices(
    volume: Any,
    model: Any,
    *,
    axis: int = 0,
    n: int = 3,
    annotations: npt.ArrayLike | None = None,
    mask: npt.ArrayLike | None = None,
    mode: str | None = None,
    device: str = "auto",
    progress: Callable[[Any], None] | None = None,
) -> tuple[list[SliceScore], npt.NDArray[np.float32]]:
    """The ``n`` slices along ``axis`` to annotate next (:func:`rank_slices`: uncertain and far from the
    ``annotations``), and the uncertainty map they come from."""
    u = volume_uncertainty(volume, model, mode=mode, axis=axis, device=device, progress=progress)
    return rank_slices(u, axis=axis, n=n, annotations=annotations, mask=mask), u
