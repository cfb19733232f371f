"""Where is the model least sure? Per-voxel uncertainty and a ranking of slices to annotate next.

probabilities (C, ...) -> entropy in [0, 1]  (+ disagreement between per-axis predictions)
-> mean per slice (annotated slices and masked voxels left out) -> the n most uncertain slices.
Correcting those slices teaches the model more than correcting evenly spaced ones.
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
    """A slice index along an axis and its mean uncertainty (0 = certain, 1 = uniform guess)."""

    index: int
    score: float


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
) -> list[SliceScore]:
    """The ``n`` most uncertain slices along ``axis``, most uncertain first.

    Slices that already hold annotations are skipped. Neighbouring slices look alike, so a chosen slice
    excludes the ``min_spacing`` slices on either side of it (default: the slice count / (4 n), at least 1);
    the n suggestions then cover n different regions of the volume.
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
    return rank_scores(scores, n=n, skip=annotated, min_spacing=min_spacing)


def rank_scores(
    scores: npt.ArrayLike,
    *,
    n: int = 3,
    skip: Sequence[int] | npt.ArrayLike = (),
    min_spacing: int | None = None,
) -> list[SliceScore]:
    """The ``n`` highest of per-slice ``scores`` (NaN = no score), leaving out the slices in ``skip``
    and, around each chosen slice, ``min_spacing`` slices on either side (see :func:`rank_slices`)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one value per slice, got shape {s.shape}")
    length = s.shape[0]
    blocked = np.isnan(s)
    skipped = np.asarray(skip, dtype=np.intp).ravel()
    if skipped.size:
        if skipped.min() < 0 or skipped.max() >= length:
            raise ValueError(f"slices to skip must lie in 0..{length - 1}")
        blocked[skipped] = True
    spacing = max(1, length // (4 * n)) if min_spacing is None else max(0, min_spacing)
    chosen: list[SliceScore] = []
    order = np.argsort(-np.nan_to_num(s, nan=-1.0), kind="stable")
    for i in order:
        if len(chosen) == n:
            break
        if blocked[i]:
            continue
        chosen.append(SliceScore(int(i), float(s[i])))
        blocked[max(0, i - spacing) : i + spacing + 1] = True
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
    """The ``n`` slices along ``axis`` to annotate next, and the uncertainty map they come from."""
    u = volume_uncertainty(volume, model, mode=mode, axis=axis, device=device, progress=progress)
    return rank_slices(u, axis=axis, n=n, annotations=annotations, mask=mask), u
