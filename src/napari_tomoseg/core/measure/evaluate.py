"""Score a prediction against reference labels: per-phase Jaccard, confusion matrix, fractions, baseline.

prediction + reference (+ grey image) -> slabs along z (confusion matrix, phase counts, per-slice
profile, misclassified voxels) -> grey-level baseline fitted and scored the same way -> ``Evaluation``.
:func:`iter_evaluate` is the generator (progress, cancel) that front ends run; :func:`evaluate` runs it
to the end. Inputs may be any arrays that slice like numpy (zarr, memory maps): only slabs are read.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core.measure.inputs import (
    MeasureProgress,
    check_cancel,
    json_number,
    slab_ranges,
)
from napari_tomoseg.core.measure.metrics import (
    ConfusionAccumulator,
    jaccard_from_confusion,
    mean_jaccard,
)
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import CancelToken, run_to_completion

__all__ = ["Evaluation", "EvaluationProgress", "evaluate", "iter_evaluate"]

#: Voxels read per slab (about 4 MiB of uint8 labels); slabs are whole z-slices.
SLAB_VOXELS = 1 << 22

COMPARING = "comparing"
BASELINE = "grey-level baseline"


#: Where an evaluation stands: the current step and ``done`` of ``total`` voxel reads. Steps are
#: ``"comparing"`` (one pass over prediction and reference) and, with an image,
#: ``"grey-level baseline"`` (a pass to fit the classifier, one to score it).
EvaluationProgress = MeasureProgress


@dataclass(frozen=True, eq=False)
class Evaluation:
    """What one evaluation found. Per-phase arrays index phases 1..C as 0..C-1.

    Attributes
    ----------
    phases : PhaseTable
        The phases both volumes use.
    confusion : ndarray of int64, shape (C + 1, C + 1)
        ``confusion[r, p]`` counts evaluated voxels of reference phase ``r`` predicted as ``p``
        (column 0: predicted "outside", row 0 always 0).
    jaccard : ndarray of float64, shape (C,)
        Per-phase Jaccard; NaN for a phase absent from both the reference and the prediction.
    mean_jaccard : float
        Mean of the defined scores (NaN if none is).
    baseline_jaccard, baseline_mean
        The same for the grey-level classifier, or None without an image (or nothing to fit on).
    baseline_note : str
        How the baseline was fitted, or why it was not computed ("" without an image).
    prediction_fractions : ndarray, shape (C,)
        Fraction of each phase among the prediction's non-zero voxels (the whole volume).
    reference_fractions : ndarray, shape (C,)
        Fraction of each phase among the evaluated reference voxels.
    prediction_voxels : ndarray of int64, shape (C,)
        Voxels of each phase in the whole prediction.
    profile : ndarray of float64, shape (z, C)
        Phase fractions of the prediction in every z-slice (NaN for a slice without phases).
    region : str
        The voxels scored, in words ("all annotated voxels", "held-out slices 3, 7 along z").
    n_evaluated : int
        Voxels scored (the sum of ``confusion``).
    voxel_size : (z, y, x) in µm, or None
        Gives physical volumes in :meth:`table`.
    prediction_name, reference_name : str
        What the two volumes are called in tables and reports (layer or file names).
    trained_on_voxels : int or None
        Scored voxels the model was trained on (given ``trained_on``): above 0, the scores are
        optimistic. None when not known.
    """

    phases: PhaseTable
    confusion: npt.NDArray[np.int64]
    jaccard: npt.NDArray[np.float64]
    mean_jaccard: float
    baseline_jaccard: npt.NDArray[np.float64] | None
    baseline_mean: float | None
    baseline_note: str
    prediction_fractions: npt.NDArray[np.float64]
    reference_fractions: npt.NDArray[np.float64]
    prediction_voxels: npt.NDArray[np.int64]
    profile: npt.NDArray[np.float64]
    region: str
    n_evaluated: int
    voxel_size: tuple[float, float, float] | None = None
    prediction_name: str = "prediction"
    reference_name: str = "reference"
    trained_on_voxels: int | None = None

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """The per-phase table as ``(header, rows)``: Jaccard (and grey-level baseline), fractions,
        volume; a last row holds the means. Undefined numbers are None."""
        header = ["phase", "Jaccard U-Net"]
        if self.baseline_jaccard is not None:
            header.append("Jaccard grey-level")
        header += ["fraction (prediction)", "fraction (reference)"]
        header.append("volume (µm³)" if self.voxel_size is not None else "volume (voxels)")
        rows: list[list[Any]] = []
        v = float(np.prod(self.voxel_size)) if self.voxel_size is not None else 1.0
        for i, name in enumerate(self.phases.names):
            row: list[Any] = [name, json_number(self.jaccard[i])]
            if self.baseline_jaccard is not None:
                row.append(json_number(self.baseline_jaccard[i]))
            row += [
                json_number(self.prediction_fractions[i]),
                json_number(self.reference_fractions[i]),
            ]
            row.append(json_number(float(self.prediction_voxels[i]) * v))
            rows.append(row)
        mean: list[Any] = ["mean", json_number(self.mean_jaccard)]
        if self.baseline_jaccard is not None:
            mean.append(json_number(self.baseline_mean))
        rows.append(mean + [None] * (len(header) - len(mean)))
        return header, rows

    def to_json(self) -> dict[str, Any]:
        """Scores, baseline, confusion matrix and fractions as plain JSON types (NaN as None)."""
        names = self.phases.names
        return {
            "prediction": self.prediction_name,
            "reference": self.reference_name,
            "region": self.region,
            "evaluated_voxels": self.n_evaluated,
            "trained_on_voxels": self.trained_on_voxels,
            "jaccard": {n: json_number(self.jaccard[i]) for i, n in enumerate(names)},
            "mean_jaccard": json_number(self.mean_jaccard),
            "grey_level_baseline": None
            if self.baseline_jaccard is None
            else {
                "note": self.baseline_note,
                "jaccard": {n: json_number(self.baseline_jaccard[i]) for i, n in enumerate(names)},
                "mean_jaccard": json_number(self.baseline_mean),
            },
            "confusion_matrix": {
                "rows": "reference phase",
                "columns": ["none", *names],
                "counts": {n: self.confusion[i + 1].tolist() for i, n in enumerate(names)},
            },
            "prediction_fractions": {
                n: json_number(self.prediction_fractions[i]) for i, n in enumerate(names)
            },
        }


def iter_evaluate(
    prediction: Any,
    reference: Any,
    *,
    phases: PhaseTable,
    image: Any = None,
    mask: Any = None,
    region: tuple[int, Sequence[int]] | None = None,
    held_out: bool = False,
    region_name: str | None = None,
    trained_on: Any = None,
    exclude_outside: bool = True,
    errors_out: Any = None,
    voxel_size: tuple[float, float, float] | None = None,
    prediction_name: str = "prediction",
    reference_name: str = "reference",
    cancel: CancelToken | None = None,
) -> Generator[EvaluationProgress, None, Evaluation]:
    """Score ``prediction`` against ``reference`` slab by slab; yields progress, returns the result.

    Parameters
    ----------
    prediction, reference : array of int, shape (z, y, x)
        Phase ids 1..C; 0 means outside the mask (prediction) or not annotated (reference, never
        scored). Any array that slices like numpy; only slabs of whole z-slices are read.
    phases : PhaseTable
        The phases both use (C = ``len(phases)``).
    image : array, shape (z, y, x), optional
        The grey volume: adds the grey-level baseline (:class:`~napari_tomoseg.core.measure.baseline.
        GreyLevelClassifier`). With ``region`` it is fitted on the reference outside the region
        (the training annotations) and scored inside, and likewise outside ``mask`` with
        ``held_out``; otherwise fitted on the whole reference, the best any global threshold can
        do. Fitting reads the image whole (``numpy.asarray``).
    mask : array of bool, shape (z, y, x), optional
        Score only voxels where it is true.
    region : (axis, slice indices), optional
        Score only these slices (e.g. the validation slices held out of fine-tuning).
    held_out : bool
        ``mask`` (and ``region``) select voxels held out of training: the baseline is fitted on the
        reference outside them, as the model was.
    region_name : str, optional
        The scored voxels in words, for the result's ``region`` (default: said from ``region``).
    trained_on : array of bool, shape (z, y, x), optional
        The voxels the model was trained on: the result counts the scored ones among them
        (``trained_on_voxels``), so that reports can say when scores are optimistic.
    exclude_outside : bool
        Leave out voxels the prediction marks 0 (outside its mask). When False they count as
        missed voxels of their reference phase.
    errors_out : array of uint8, shape (z, y, x), optional
        Filled slab by slab with 1 where a scored voxel is misclassified, 0 elsewhere.
    voxel_size : (z, y, x) in µm, optional
        Stored in the result for physical volumes.
    prediction_name, reference_name : str
        Names used in messages and in the result.
    cancel : CancelToken, optional
        Checked between slabs; a cancelled evaluation raises :class:`~napari_tomoseg.core.
        progress.Cancelled`.

    Yields
    ------
    EvaluationProgress

    Returns
    -------
    Evaluation

    Raises
    ------
    ValueError
        Shapes differ, ids lie outside 0..C, the region lies outside the volume, or no voxel is
        left to score.
    """
    shape = tuple(int(s) for s in np.shape(prediction))
    if len(shape) != 3:
        raise ValueError(f"the {prediction_name} must be a 3D label volume, got shape {shape}")
    for what, name, arr in (
        ("reference", reference_name, reference),
        ("image", "image", image),
        ("mask", "mask", mask),
        ("trained_on", "trained-on mask", trained_on),
        ("errors_out", "errors output", errors_out),
    ):
        if arr is not None and tuple(np.shape(arr)) != shape:
            raise ValueError(
                f"{prediction_name} {shape} and {name} {tuple(np.shape(arr))} differ in shape; "
                "they must match voxel for voxel"
                if what == "reference"
                else f"the {name} {tuple(np.shape(arr))} and the {prediction_name} {shape} differ "
                "in shape"
            )
    n = len(phases)
    slabs = _slabs(shape)
    selection = _Selection(shape, region, mask, exclude_outside)
    n_vox = int(np.prod(shape))
    total = n_vox * (3 if image is not None else 1)
    done = 0

    def step(name: str) -> EvaluationProgress:
        check_cancel(cancel, "evaluation")
        return EvaluationProgress(name, done, total)

    # One pass: confusion matrix, phase counts per slice, misclassified voxels.
    confusion = ConfusionAccumulator(n)
    per_slice = np.zeros((shape[0], n + 1), dtype=np.int64)
    n_trained = 0
    yield step(COMPARING)
    for a, b in slabs:
        pred = np.asarray(prediction[a:b])
        ref = np.asarray(reference[a:b])
        keep = selection.keep(a, b, pred)
        confusion.update(pred, ref, mask=keep)
        if trained_on is not None:
            seen = (ref > 0) & np.asarray(trained_on[a:b]).astype(bool)
            n_trained += int(np.count_nonzero(seen if keep is None else seen & keep))
        rows = np.arange(b - a, dtype=np.int64)[:, None, None]
        per_slice[a:b] = np.bincount(
            (rows * (n + 1) + pred.astype(np.int64)).ravel(), minlength=(b - a) * (n + 1)
        ).reshape(b - a, n + 1)
        if errors_out is not None:
            wrong = (ref > 0) & (pred != ref)
            if keep is not None:
                wrong &= keep
            errors_out[a:b] = wrong.astype(np.uint8)
        done += (b - a) * shape[1] * shape[2]
        yield step(COMPARING)
    cm = confusion.matrix.copy()
    if cm.sum() == 0:
        raise ValueError(
            f"the {reference_name} has no labelled voxel to compare with"
            + (" in the held-out voxels" if region is not None or held_out else "")
            + "; annotate some voxels or choose another reference"
        )
    scores = jaccard_from_confusion(cm)

    baseline = baseline_mean = None
    note = ""
    if image is not None:
        from napari_tomoseg.core.measure.baseline import GreyLevelClassifier

        yield step(BASELINE)
        ref_all = np.asarray(reference)
        outside = region is not None or (held_out and mask is not None)
        fit = ref_all if not outside else np.where(selection.selected(), 0, ref_all)
        done += n_vox
        if not fit.any():
            note = "not computed: no annotated voxel outside the held-out voxels to fit it on"
            done += n_vox
        else:
            classifier = GreyLevelClassifier(n).fit(image, fit)
            del fit, ref_all
            grey_cm = ConfusionAccumulator(n)
            yield step(BASELINE)
            for a, b in slabs:
                grey = classifier.predict(np.asarray(image[a:b]))
                pred = np.asarray(prediction[a:b])
                grey_cm.update(grey, np.asarray(reference[a:b]), mask=selection.keep(a, b, pred))
                done += (b - a) * shape[1] * shape[2]
                yield step(BASELINE)
            baseline = grey_cm.jaccard()
            baseline_mean = mean_jaccard(baseline)
            note = (
                "fitted on the reference itself: the best any grey-level threshold can do"
                if not outside
                else "fitted on the annotations outside the held-out voxels"
            )

    counts = per_slice[:, 1:].sum(axis=0)
    reference_counts = cm[1:].sum(axis=1)
    slice_totals = per_slice[:, 1:].sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        profile = np.where(
            slice_totals > 0, per_slice[:, 1:] / np.where(slice_totals > 0, slice_totals, 1), np.nan
        )
    return Evaluation(
        phases=phases,
        confusion=cm,
        jaccard=scores,
        mean_jaccard=mean_jaccard(scores),
        baseline_jaccard=baseline,
        baseline_mean=baseline_mean,
        baseline_note=note,
        prediction_fractions=_fractions(counts),
        reference_fractions=_fractions(reference_counts),
        prediction_voxels=counts.astype(np.int64),
        profile=profile,
        region=region_name or selection.describe(),
        n_evaluated=int(cm.sum()),
        voxel_size=None if voxel_size is None else _voxel_size(voxel_size),
        prediction_name=prediction_name,
        reference_name=reference_name,
        trained_on_voxels=None if trained_on is None else n_trained,
    )


def evaluate(prediction: Any, reference: Any, *, phases: PhaseTable, **options: Any) -> Evaluation:
    """Run :func:`iter_evaluate` to the end (no progress, no cancel) and return its result.

    Takes the same keyword options as :func:`iter_evaluate`.

    Examples
    --------
    >>> ref = np.array([[[1, 1, 2, 2]]], np.uint8)
    >>> pred = np.array([[[1, 2, 2, 2]]], np.uint8)
    >>> evaluate(pred, ref, phases=PhaseTable.from_names(["a", "b", "c"])).jaccard
    array([0.5       , 0.66666667,        nan])
    """
    return run_to_completion(iter_evaluate(prediction, reference, phases=phases, **options))


# --------------------------------------------------------------------------------------------


class _Selection:
    """Which voxels of a slab are scored: region slices, a mask, the prediction's inside."""

    def __init__(
        self,
        shape: tuple[int, ...],
        region: tuple[int, Sequence[int]] | None,
        mask: Any,
        exclude_outside: bool,
    ) -> None:
        self.shape = shape
        self.mask = mask
        self.exclude_outside = exclude_outside
        self.axis: int | None = None
        self.indices: list[int] = []
        if region is not None:
            axis, slices = region
            if axis not in (0, 1, 2):
                raise ValueError(f"the region's axis must be 0, 1 or 2 (z, y, x), got {axis}")
            self.axis = int(axis)
            self.indices = sorted({int(i) for i in slices if 0 <= int(i) < shape[axis]})
            if not self.indices:
                raise ValueError(f"the held-out slices {list(slices)} lie outside the volume")

    def in_region(self, a: int = 0, b: int | None = None) -> npt.NDArray[np.bool_]:
        """The region's voxels in z-slices ``a:b`` (all voxels without a region)."""
        b = self.shape[0] if b is None else b
        out = np.zeros((b - a, *self.shape[1:]), dtype=bool)
        if self.axis is None:
            out[...] = True
        elif self.axis == 0:
            out[[i - a for i in self.indices if a <= i < b]] = True
        else:
            index: list[Any] = [slice(None)] * 3
            index[self.axis] = self.indices
            out[tuple(index)] = True
        return out

    def selected(self) -> npt.NDArray[np.bool_]:
        """The region's voxels that the mask keeps, over the whole volume (the held-out voxels)."""
        out = self.in_region()
        if self.mask is not None:
            out &= np.asarray(self.mask).astype(bool)
        return out

    def keep(self, a: int, b: int, prediction: npt.NDArray[Any]) -> npt.NDArray[np.bool_] | None:
        """The scored voxels of z-slices ``a:b`` (None: every annotated voxel)."""
        keep = prediction > 0 if self.exclude_outside else None
        if self.axis is not None:
            inside = self.in_region(a, b)
            keep = inside if keep is None else keep & inside
        if self.mask is not None:
            m = np.asarray(self.mask[a:b]).astype(bool)
            keep = m if keep is None else keep & m
        return keep

    def describe(self) -> str:
        if self.axis is None:
            return "all annotated voxels"
        return f"held-out slices {', '.join(map(str, self.indices))} along {'zyx'[self.axis]}"


def _slabs(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of whole z-slices, about :data:`SLAB_VOXELS` voxels each."""
    return slab_ranges(shape[0], SLAB_VOXELS // max(1, shape[1] * shape[2]))


def _fractions(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    total = counts.sum()
    return counts / total if total else np.full(counts.shape, np.nan)


def _voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3:
        raise ValueError(f"voxel_size must be three numbers (z, y, x) in µm, got {voxel_size}")
    return (vs[0], vs[1], vs[2])
