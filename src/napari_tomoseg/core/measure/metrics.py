"""Segmentation metrics: confusion matrix, per-phase Jaccard (IoU), and an accumulator.

prediction, reference (ids 1..C, 0 = ignore) -> confusion matrix (C x C) -> Jaccard per phase, mean.
Accumulate confusion matrices over tiles, slabs or volumes; derive scores once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


def confusion_matrix(
    prediction: npt.ArrayLike,
    reference: npt.ArrayLike,
    n_phases: int,
    *,
    mask: npt.ArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """Count voxels by (reference phase, predicted phase).

    Parameters
    ----------
    prediction, reference : array of int
        Phase ids 1..C, same shape. Voxels where ``reference == 0`` (not annotated) are ignored;
        a prediction of 0 (outside the mask) on an annotated voxel counts as wrong for every phase
        (it is a false negative of the reference phase) but not as a false positive of any phase.
    n_phases : int
        C, the number of phases.
    mask : array of bool, optional
        Only voxels where ``mask`` is true are counted.

    Returns
    -------
    (C + 1, C + 1) int64 array ``cm`` where ``cm[r, p]`` counts voxels with reference id ``r`` and
    predicted id ``p``. Row and column 0 hold "not annotated" / "no prediction"; row 0 is always 0.
    """
    pred = np.asarray(prediction)
    ref = np.asarray(reference)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if n_phases < 1:
        raise ValueError(f"n_phases must be >= 1, got {n_phases}")
    for name, arr in (("prediction", pred), ("reference", ref)):
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool:
            raise ValueError(f"{name} must hold integer phase ids, got dtype {arr.dtype}")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > n_phases):
            raise ValueError(
                f"{name} holds ids outside 0..{n_phases} (found {int(arr.min())}..{int(arr.max())}); "
                f"check that it uses the same phase table ({n_phases} phases)"
            )
    keep = ref > 0
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != ref.shape:
            raise ValueError(f"mask shape {m.shape} differs from reference shape {ref.shape}")
        keep &= m
    k = n_phases + 1
    flat = ref[keep].astype(np.int64) * k + pred[keep].astype(np.int64)
    return np.bincount(flat, minlength=k * k).reshape(k, k)


def jaccard_from_confusion(cm: npt.NDArray[np.integer]) -> npt.NDArray[np.float64]:
    """Per-phase Jaccard TP / (TP + FP + FN) from a (C + 1, C + 1) confusion matrix.

    A phase absent from both reference and prediction has no defined score: NaN, not 0 or 1.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)[1:]
    fn = cm[1:, :].sum(axis=1) - tp  # reference phase, predicted something else (or nothing)
    fp = cm[1:, 1:].sum(axis=0) - tp  # predicted phase on an annotated voxel of another phase
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def jaccard_per_phase(
    prediction: npt.ArrayLike,
    reference: npt.ArrayLike,
    n_phases: int,
    *,
    mask: npt.ArrayLike | None = None,
) -> npt.NDArray[np.float64]:
    """Per-phase Jaccard of ``prediction`` against ``reference`` (index i is phase i + 1)."""
    return jaccard_from_confusion(confusion_matrix(prediction, reference, n_phases, mask=mask))


def mean_jaccard(scores: npt.ArrayLike) -> float:
    """Mean of the defined (non-NaN) per-phase scores; NaN if none is defined."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[~np.isnan(s)]
    return float(s.mean()) if s.size else float("nan")


@dataclass
class ConfusionAccumulator:
    """Sum confusion matrices over tiles, slabs or volumes, then score once.

    >>> acc = ConfusionAccumulator(n_phases=3)
    >>> acc.update(pred_slab, ref_slab)          # doctest: +SKIP
    >>> acc.jaccard(), acc.mean_jaccard()         # doctest: +SKIP
    """

    n_phases: int
    matrix: npt.NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        if self.n_phases < 1:
            raise ValueError(f"n_phases must be >= 1, got {self.n_phases}")
        self.matrix = np.zeros((self.n_phases + 1, self.n_phases + 1), dtype=np.int64)

    def update(
        self,
        prediction: npt.ArrayLike,
        reference: npt.ArrayLike,
        *,
        mask: npt.ArrayLike | None = None,
    ) -> None:
        self.matrix += confusion_matrix(prediction, reference, self.n_phases, mask=mask)

    def reset(self) -> None:
        self.matrix[:] = 0

    def jaccard(self) -> npt.NDArray[np.float64]:
        return jaccard_from_confusion(self.matrix)

    def mean_jaccard(self) -> float:
        return mean_jaccard(self.jaccard())

    @property
    def n_voxels(self) -> int:
        return int(self.matrix.sum())


def phase_fractions(labels: npt.ArrayLike, n_phases: int) -> npt.NDArray[np.float64]:
    """Fraction of labelled (non-zero) voxels in each phase 1..C; NaN if no voxel is labelled."""
    lab = np.asarray(labels)
    counts = np.bincount(lab.ravel().astype(np.int64), minlength=n_phases + 1)[1 : n_phases + 1]
    total = counts.sum()
    return counts / total if total else np.full(n_phases, np.nan)
