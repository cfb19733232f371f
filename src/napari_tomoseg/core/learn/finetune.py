"""Fine-tune a model on a few annotated slices of the user's own volume.

volume + annotations (0 = not annotated) -> plan (phases, head, training / validation split)
-> annotated slices as training data -> iter_train (progress events, cancel) -> TomosegModel.
Nothing the caller gives is modified: the base model is copied, the volume and annotations only read.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core.checks import finite_checked
from napari_tomoseg.core.model.modes import AXIS_NAMES, TrainMode, finetuned_mode
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import CancelToken, run_to_completion

log = logging.getLogger(__name__)

Validation = Literal["auto", "slices", "band", "none"]
#: With fewer annotated slices than this, ``validation="auto"`` holds out a band of every slice.
FEW_SLICES = 5
#: Fraction of the annotated voxels held out for validation (in a band of each slice, with few slices).
#: Held-out voxels are not trained on: on the shifted-domain benchmark a fifth cost 0.02 Jaccard.
HOLDOUT = 0.1
#: Held-out voxels a phase needs for its Jaccard to rank two models (the standard error of a
#: Jaccard of 0.8 on n voxels is about 0.4 / sqrt(n): 0.02 on 400 voxels, 0.04 on 100). With 100,
#: the 152 pore voxels in the band of one slice once decided: the trained pore scored 0.61 there
#: against the start's 0.75 and the start was kept, though over the unannotated slices the trained
#: model was better at every phase (mean 0.883 against 0.833).
MIN_RANKING_VOXELS = 400
#: Annotations covering less than this share of their slices are sparse (strokes): the phase shares
#: the loss assumes are then those of the slices (estimated), not the annotations' own.
SPARSE = 0.5
#: Probability above which the starting model's guess for a voxel the strokes leave out guides training.
GUIDE_CONFIDENCE = 0.9
#: Guesses nearer than this (voxels) to an annotation that corrects the same guess are dropped.
GUIDE_RADIUS = 8.0
#: Smallest slice edge worth training on.
MIN_PLANE = 16
#: How a 2D base model's first kernels are spread over the slices of a 2.5D fine-tuned model.
INFLATE_SPREAD: Literal["binomial", "centre"] = "centre"


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune.

    Parameters
    ----------
    budget : float or None
        Seconds of optimisation (validation included). ``steps`` and ``budget``: the first reached stops.
    steps : int or None
        Optimisation steps. With steps and no time budget (``budget=None``) the result is bitwise
        reproducible on CPU; with both, the learning-rate schedule follows whichever is further
        along, so the clock enters it and two runs differ slightly.
    learning_rate : float
        Peak learning rate (linear warm-up, cosine decay). On the shifted-domain benchmark (3 slices,
        335 steps, the steps of 120 s on a 2-core AVX2 CPU) peaks of 1.5e-3 / 3e-3 / 5e-3 gave a
        mean Jaccard of 0.902 / 0.908 / 0.911 on the hardest seed, 3e-3 and 5e-3 0.920 and 0.922
        over three seeds; with 1050 steps (120 s with native bf16) 1.5e-3 / 3e-3 / 5e-3 gave
        0.912 / 0.915 / 0.915 on that seed.
    optimizer : {"adamw", "adabelief"}
    augment : bool
        Dihedral transforms, intensity shift/scale and noise.
    validation : {"auto", "slices", "band", "none"}
        What to hold out: ``slices`` holds out ``validation_slices``; ``band`` a band of every annotated
        slice (no slice is lost to training); ``auto`` is ``band`` with fewer than 5 annotated slices,
        else a tenth of the annotated slices (at least one, evenly spread); ``none`` keeps the last
        weights.
    validation_slices : tuple of int
        Indices along ``axis`` to hold out when ``validation="slices"``.
    axis : int or None
        Axis of the annotated slices (0 = z). ``None`` picks the axis along which the annotations lie in
        the fewest slices.
    seed : int
    crop, batch_size : int
        Training crop edge (multiple of 8) and crops per step. On the shifted-domain benchmark
        (3 slices) 4 crops per step at a learning rate of 1.5e-3 made twice the steps of 8 crops at
        1e-3 in the same time and ended as good or better (30 s: +0.004 to +0.007; 120 s: +0.003).
    loss : {"jaccard", "jaccard+ce"}
    class_weight_power : float
        Cross-entropy weights ``frequency ** -power``: 0.5 lifts rare phases learnt from few voxels.
    rare_fraction : float
        Share of crops centred on a phase drawn uniformly among the annotated ones.
    validate_every : int or None
        Steps between validations (``None``: about 12 validations per run, fewer where they would
        take over a tenth of a timed run).
    patience : int or None
        Stop after this many validations without improvement.
    base_filters : int
        Width of a model trained from scratch (``base=None``).
    mode : {"2d", "2.5d", "3d"} or None
        Mode of a model trained from scratch (None: 2D). With a base model it must match the base
        model's, except that a 2D base is extended to 2.5D: it then also sees the neighbouring
        slices (``context_slices``), starting as the 2D model. None does that for a 2D base and
        keeps the mode of any other base; ``"2d"`` keeps a 2D base 2D.
    context_slices : int
        Slices a 2.5D model made here sees: the slice and its neighbours (odd). On the
        shifted-domain benchmark (3 annotated slices, 120 s) the mean Jaccard was 0.870 in 2D, 0.883
        with 3 slices, 0.896 with 5 and 0.895 with 7 (the random forest: 0.875).
    freeze_norm : bool
        Fine-tune a base model with its batch norms frozen (folded into the convolutions): one
        operation less per layer. Off by default: on the shifted-domain benchmark the norms adapting
        to the new volume were worth 0.03 Jaccard (seed 500, 30 s: 0.923 learnt, 0.890 frozen).
        A model trained from scratch always learns its norms.
    guide : float
        With sparse annotations (strokes, under half of their slices) and a base model with the
        same phases: weight of a cross-entropy on the unannotated voxels of the annotated slices
        that the starting model calls with confidence over 0.9, towards its own guess, except within
        8 voxels of a stroke that corrects the same guess. It keeps what the model got right
        where the strokes say nothing; without it, strokes through the middle of each phase left
        the model worse than it started. On the shifted-domain benchmark (strokes on 3 slices, 30
        steps) the mean Jaccard was 0.785 without, 0.792 / 0.801 / 0.809 / 0.817 with weights
        0.3 / 1 / 3 / 10. 0 turns it off.
    keep : {"last", "best"}
        The weights returned: the last ones, or the best validated ones; either way the starting
        model instead when it scores better on the held-out voxels. Picking the best of a dozen
        noisy validations on a small held-out band tended to pick an early step (seed 500, 30 s:
        0.893 best, 0.903 last).
    """

    budget: float | None = 120.0
    steps: int | None = None
    learning_rate: float = 3e-3
    optimizer: Literal["adamw", "adabelief"] = "adamw"
    augment: bool = True
    validation: Validation = "auto"
    validation_slices: tuple[int, ...] = ()
    axis: int | None = None
    seed: int = 0
    crop: int = 128
    batch_size: int = 4
    loss: Literal["jaccard", "jaccard+ce"] = "jaccard+ce"
    class_weight_power: float = 0.5
    rare_fraction: float = 0.3
    validate_every: int | None = None
    patience: int | None = None
    base_filters: int = 6
    mode: TrainMode | None = None
    context_slices: int = 5
    freeze_norm: bool = False
    guide: float = 10.0
    keep: Literal["last", "best"] = "last"

    def __post_init__(self) -> None:
        if self.budget is None and self.steps is None:
            raise ValueError(
                "FinetuneConfig needs a budget (seconds) or steps to know when to stop"
            )
        if self.budget is not None and not self.budget > 0:
            raise ValueError(
                f"FinetuneConfig.budget must be > 0 seconds, got {self.budget}; give e.g. 120"
            )
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"FinetuneConfig.steps must be >= 1, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"FinetuneConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.optimizer not in ("adamw", "adabelief"):
            raise ValueError(
                f"FinetuneConfig.optimizer must be 'adamw' or 'adabelief', got {self.optimizer!r}"
            )
        if self.validation not in ("auto", "slices", "band", "none"):
            raise ValueError(
                "FinetuneConfig.validation must be 'auto', 'slices', 'band' or 'none', "
                f"got {self.validation!r}"
            )
        if self.validation == "slices" and not self.validation_slices:
            raise ValueError("validation='slices' needs validation_slices (indices along the axis)")
        if self.axis is not None and self.axis not in (0, 1, 2):
            raise ValueError(f"FinetuneConfig.axis must be 0, 1, 2 or None, got {self.axis}")
        if self.context_slices < 3 or self.context_slices % 2 == 0:
            raise ValueError(
                f"FinetuneConfig.context_slices must be odd and >= 3, got {self.context_slices}"
            )
        if self.mode is not None and self.mode not in ("2d", "2.5d", "3d"):
            raise ValueError(f"FinetuneConfig.mode must be '2d', '2.5d' or '3d', got {self.mode!r}")
        if self.validate_every is not None and self.validate_every < 1:
            raise ValueError(
                f"FinetuneConfig.validate_every must be >= 1, got {self.validate_every}"
            )
        if self.patience is not None and self.patience < 1:
            raise ValueError(
                f"FinetuneConfig.patience must be >= 1 validations, got {self.patience}"
            )
        if self.keep not in ("last", "best"):
            raise ValueError(f"FinetuneConfig.keep must be 'last' or 'best', got {self.keep!r}")
        if not self.guide >= 0:
            raise ValueError(f"FinetuneConfig.guide must be >= 0, got {self.guide}")
        if self.base_filters < 1:
            raise ValueError(f"FinetuneConfig.base_filters must be >= 1, got {self.base_filters}")


@dataclass(frozen=True)
class FinetunePlan:
    """What fine-tuning will do, decided before any heavy work (cheap to compute, for the GUI too)."""

    phases: PhaseTable
    replace_head: bool
    axis: int
    train_slices: tuple[int, ...]
    validation_slices: tuple[int, ...]
    validation: Validation
    counts: tuple[int, ...]  # annotated voxels per phase (ids 1..C)
    crop: int = 128  # training crop edge, at most the slice size
    notes: tuple[str, ...] = ()


@dataclass
class FinetuneResult:
    """The fine-tuned model and how it got there."""

    model: Any  # TomosegModel
    validation: dict[str, float] | None
    notes: list[str]
    stopped: str
    steps: int
    seconds: float
    voxels_seen: int
    plan: FinetunePlan
    history: list[Any] = field(default_factory=list)
    #: Per-phase held-out Jaccard of the starting model (the base, before any step), if it was scored.
    start_validation: dict[str, float] | None = None
    #: ``"fine-tuned"``, or ``"start"`` when training did not beat the starting model on the held-out voxels.
    kept: Literal["fine-tuned", "start"] = "fine-tuned"
    #: Exactly which voxels were held out of training (see :func:`held_out_voxels`), or None.
    held_out: dict[str, Any] | None = None
    #: The phases the starting and the trained model were ranked on (those with enough held-out
    #: voxels, :data:`MIN_RANKING_VOXELS`), or None when nothing was compared.
    compared: tuple[str, ...] | None = None


# --------------------------------------------------------------------------------------------
# Planning: pure numpy, fast, raises the user-facing errors
# --------------------------------------------------------------------------------------------


def _check_annotations(
    volume_shape: Sequence[int], annotations: npt.NDArray[Any]
) -> npt.NDArray[np.uint8]:
    if tuple(annotations.shape) != tuple(volume_shape):
        raise ValueError(
            f"annotations have shape {tuple(annotations.shape)} but the volume is {tuple(volume_shape)}; "
            "they must match voxel for voxel"
        )
    if len(volume_shape) != 3:
        raise ValueError(
            f"fine-tuning needs a 3D volume (z, y, x), got shape {tuple(volume_shape)}"
        )
    if annotations.dtype.kind not in "ui":
        if annotations.dtype.kind == "b":
            raise ValueError(
                "annotations are boolean; give phase ids (1..C, 0 = not annotated) instead"
            )
        raise ValueError(
            f"annotations have dtype {annotations.dtype}; expected integer phase ids (1..C, 0 = not annotated)"
        )
    if annotations.size and (int(annotations.min()) < 0 or int(annotations.max()) > 254):
        raise ValueError(
            "annotation ids must be in 0..254 (0 = not annotated); "
            f"found {int(annotations.min())}..{int(annotations.max())}"
        )
    return annotations.astype(np.uint8, copy=False)


def _annotated_index(annotations: npt.NDArray[np.uint8], axis: int) -> npt.NDArray[np.int64]:
    other = tuple(a for a in range(3) if a != axis)
    return np.flatnonzero(np.any(annotations > 0, axis=other))


def _choose_axis(annotations: npt.NDArray[np.uint8]) -> int:
    counts = [_annotated_index(annotations, a).size for a in range(3)]
    return int(np.argmin(counts))  # ties -> z, the usual slicing axis


def _phase_table(
    present: list[int], base_phases: PhaseTable | None, phases: PhaseTable | None
) -> tuple[PhaseTable, bool, list[str]]:
    notes: list[str] = []
    if phases is not None:
        extra = [i for i in present if i > len(phases)]
        if extra:
            raise ValueError(
                f"annotations hold phase ids {extra} that the phase table lacks "
                f"({', '.join(f'{p.id}={p.name}' for p in phases.phases)}); "
                "add the phases or relabel the annotations"
            )
        missing = [p.name for p in phases.phases if p.id not in present]
        if missing:
            had = base_phases is not None and len(base_phases) == len(phases)
            notes.append(
                f"phases {missing} have no annotated voxel and are not learnt from these "
                "annotations: "
                + (
                    "the model keeps only what its base model knew of them and may predict "
                    "them less; "
                    if had
                    else "the model will rarely predict them; "
                )
                + "annotate a few voxels of each"
            )
        table = phases
    else:
        n = max(present)
        gaps = [i for i in range(1, n + 1) if i not in present]
        if base_phases is not None and set(present) <= set(base_phases.ids) and gaps:
            # A subset of the base model's phases with a gap (e.g. matrix and pore corrected, no fibre):
            # ids 1..C must stay contiguous, so keep the base table rather than invent one.
            table = base_phases
            notes.append(
                f"phases {[base_phases.phases[i - 1].name for i in gaps]} are not annotated and "
                "not learnt from these annotations; the base model's phase table is kept"
            )
        elif gaps:
            raise ValueError(
                f"annotations use phase ids {present} but not {gaps}; a model's phases are 1..C: "
                "relabel the annotations or name every phase (--phases a,b,c)"
            )
        elif base_phases is not None and n == len(base_phases):
            table = base_phases
        else:
            table = PhaseTable.from_names([f"phase {i}" for i in range(1, n + 1)])
    replace_head = base_phases is None or len(table) != len(base_phases)
    if base_phases is not None and replace_head:
        notes.append(
            f"the base model predicts {len(base_phases)} phases ({', '.join(base_phases.names)}) "
            f"but the annotations have {len(table)} ({', '.join(table.names)}): a new output layer "
            "is trained and the rest of the network is fine-tuned"
        )
    elif base_phases is not None and table is not base_phases and table.names != base_phases.names:
        notes.append(
            f"phase names {list(table.names)} replace the base model's {list(base_phases.names)} "
            "(same ids: the output layer is fine-tuned)"
        )
    return table, replace_head, notes


def plan_finetune(
    volume_shape: Sequence[int],
    annotations: npt.ArrayLike,
    *,
    base: Any = None,
    phases: PhaseTable | None = None,
    config: FinetuneConfig | None = None,
) -> FinetunePlan:
    """Check the inputs and decide phases, output layer and validation split. Raises ``ValueError``.

    Parameters
    ----------
    volume_shape : (z, y, x)
    annotations : integer array of ``volume_shape``; 0 = not annotated, 1..C = phases.
    base : TomosegModel or None
        The model to start from; ``None`` trains from scratch.
    phases : PhaseTable, optional
        Names for the annotation ids. Without it the ids present decide: the base model's table when
        they match it, else ``phase 1..C`` and a new output layer.
    """
    config = config or FinetuneConfig()
    ann = _check_annotations(volume_shape, np.asarray(annotations))
    counts = np.bincount(ann.ravel(), minlength=256)
    present = [int(i) for i in np.flatnonzero(counts[1:]) + 1]
    if not present:
        raise ValueError(
            "no annotated voxel: paint or import annotations (phase ids 1..C) on a few slices first"
        )
    base_phases = base.phases if base is not None else None
    table, replace_head, notes = _phase_table(present, base_phases, phases)
    if len(present) == 1:
        notes.append(
            f"only phase {table.phases[present[0] - 1].name!r} is annotated: the model cannot learn "
            "to separate phases it never saw; annotate at least two phases"
        )
    if len(table) < 2:
        raise ValueError(
            "a segmentation model needs at least two phases; annotate voxels of a second phase"
        )
    if base is not None:
        # raises when the base cannot be fine-tuned in the requested mode
        _, extends = finetuned_mode(base.defaults.mode, base.config, config.mode)
        if extends:
            notes.append(
                f"the 2D base model is extended to 2.5D: it sees {config.context_slices} slices "
                "(the slice and its neighbours) and starts "
                "as the 2D model (the neighbours' weights start at 0 and are learnt)"
            )
    axis = config.axis if config.axis is not None else _choose_axis(ann)
    annotated = [int(i) for i in _annotated_index(ann, axis)]
    plane = [s for a, s in enumerate(ann.shape) if a != axis]
    if min(plane) < MIN_PLANE:
        raise ValueError(
            f"slices along {AXIS_NAMES[axis]} are {plane[0]}x{plane[1]} voxels; training needs at least "
            f"{MIN_PLANE}x{MIN_PLANE}: annotate slices along another axis (FinetuneConfig.axis)"
        )
    crop = config.crop
    if crop > max(plane):
        crop = max(8, max(plane) // 8 * 8)
        notes.append(
            f"the slices ({plane[0]}x{plane[1]}) are smaller than the {config.crop}-voxel training "
            f"crop: crops of {crop} are used"
        )
    validation: Validation = config.validation
    if validation == "auto":
        validation = "band" if len(annotated) < FEW_SLICES else "slices"
    if validation == "slices":
        if config.validation == "slices":
            held = sorted(set(config.validation_slices))
            bad = [i for i in held if i not in annotated]
            if bad:
                raise ValueError(
                    f"validation slices {bad} hold no annotation along axis {axis}; "
                    f"annotated slices: {annotated[:20]}"
                )
        else:
            k = max(1, round(HOLDOUT * len(annotated)))
            # Evenly spread held-out slices, never the first or last annotated one.
            picks = np.linspace(0, len(annotated) - 1, k + 2)[1:-1].round().astype(int)
            held = sorted({annotated[i] for i in picks})
        if len(held) >= len(annotated):
            raise ValueError(
                "every annotated slice would be held out for validation; annotate more slices "
                "or use validation='band'"
            )
        train = [i for i in annotated if i not in held]
    else:
        held = list(annotated) if validation == "band" else []
        train = list(annotated)
    return FinetunePlan(
        phases=table,
        replace_head=replace_head,
        axis=axis,
        train_slices=tuple(train),
        validation_slices=tuple(held),
        validation=validation,
        counts=tuple(int(c) for c in counts[1 : len(table) + 1]),
        crop=crop,
        notes=tuple(notes),
    )


def band_columns(labels: npt.NDArray[np.uint8], fraction: float = HOLDOUT) -> tuple[int, int]:
    """Columns ``lo:hi`` (last axis) of the band holding about ``fraction`` of a slice's annotated voxels.

    The band is centred on the median annotated column, so scribbles and partial slices lose a fair
    share, not all or nothing. ``(0, 0)`` for a slice without annotations.
    """
    per_column = (labels > 0).sum(axis=tuple(range(labels.ndim - 1)))
    total = int(per_column.sum())
    if total == 0:
        return 0, 0
    cum = np.cumsum(per_column) / total
    lo = int(np.searchsorted(cum, 0.5 - fraction / 2))
    hi = int(np.searchsorted(cum, 0.5 + fraction / 2)) + 1
    return lo, min(hi, labels.shape[-1])


def band_mask(labels: npt.NDArray[np.uint8], fraction: float = HOLDOUT) -> npt.NDArray[np.bool_]:
    """The band of :func:`band_columns` as a mask of the slice's shape."""
    lo, hi = band_columns(labels, fraction)
    mask = np.zeros(labels.shape, bool)
    mask[..., lo:hi] = True
    return mask


def held_out_voxels(plan: FinetunePlan, annotations: npt.NDArray[Any]) -> dict[str, Any] | None:
    """Exactly which annotated voxels ``plan`` keeps out of training, as a small JSON-able record.

    ``{"axis": "z", "kind": "slices", "slices": [12, 40]}``: every annotated voxel of those slices;
    ``{"axis": "z", "kind": "band", "slices": [...], "columns": [[lo, hi], ...]}``: in each slice, the
    annotated voxels of columns ``lo:hi`` of its last axis. None when nothing is held out.
    :func:`held_out_mask` turns the record back into voxels.
    """
    if plan.validation not in ("slices", "band") or not plan.validation_slices:
        return None
    record: dict[str, Any] = {
        "axis": AXIS_NAMES[plan.axis],
        "kind": plan.validation,
        "slices": [int(i) for i in plan.validation_slices],
    }
    if plan.validation == "band":
        record["columns"] = [
            list(band_columns(_labels_slice(annotations, i, plan.axis)))
            for i in plan.validation_slices
        ]
    return record


def held_out_mask(record: dict[str, Any], shape: Sequence[int]) -> npt.NDArray[np.bool_]:
    """The voxels a :func:`held_out_voxels` record names, as a mask of ``shape`` (annotated or not).

    Raises ``ValueError`` when the record does not fit ``shape``.
    """
    axis = (
        AXIS_NAMES.index(record["axis"]) if isinstance(record["axis"], str) else int(record["axis"])
    )
    if len(shape) != 3 or not 0 <= axis < 3:
        raise ValueError(f"held-out voxels are recorded for a 3D volume; got shape {tuple(shape)}")
    slices = [int(i) for i in record["slices"]]
    if any(not 0 <= i < shape[axis] for i in slices):
        raise ValueError(
            f"the held-out slices {slices} along {AXIS_NAMES[axis]} do not fit a volume of shape "
            f"{tuple(shape)}: it is not the volume the model was fine-tuned on"
        )
    mask = np.zeros(tuple(shape), bool)
    columns = record.get("columns") if record.get("kind") == "band" else None
    for n, i in enumerate(slices):
        key: list[Any] = [slice(None)] * 3
        key[axis] = i
        if columns is None:
            mask[tuple(key)] = True
        else:
            lo, hi = (int(c) for c in columns[n])
            plane = np.zeros([s for a, s in enumerate(shape) if a != axis], bool)
            plane[..., lo:hi] = True
            mask[tuple(key)] = plane
    return mask


# --------------------------------------------------------------------------------------------
# Training data: annotated slices only (a 2048^3 volume is never normalised whole)
# --------------------------------------------------------------------------------------------


def _slice_stack(
    volume: Any, index: int, axis: int, half: int, low: float, high: float
) -> npt.NDArray[np.float32]:
    from napari_tomoseg.core.prep.intensity import apply_range

    n = volume.shape[axis]
    chans = [min(max(index + d, 0), n - 1) for d in range(-half, half + 1)]
    planes = []
    for c in chans:
        key: list[Any] = [slice(None)] * 3
        key[axis] = c
        planes.append(np.asarray(volume[tuple(key)]))
    return apply_range(np.stack(planes), low, high)


def _labels_slice(ann: npt.NDArray[np.uint8], index: int, axis: int) -> npt.NDArray[np.uint8]:
    return np.take(ann, index, axis=axis)


def _around_labels(
    image: npt.NDArray[np.float32], labels: npt.NDArray[np.uint8], halo: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """The part of a slice (and its image stack) around its labelled voxels, with ``halo`` of context.

    Validation predicts only there: on a 2048^2 slice with a held-out band, a fraction of the cost.
    """
    rows = np.flatnonzero(labels.any(axis=1))
    cols = np.flatnonzero(labels.any(axis=0))
    if rows.size == 0:
        return image, labels
    r0, r1 = max(0, int(rows[0]) - halo), min(labels.shape[0], int(rows[-1]) + 1 + halo)
    c0, c1 = max(0, int(cols[0]) - halo), min(labels.shape[1], int(cols[-1]) + 1 + halo)
    return (
        np.ascontiguousarray(image[:, r0:r1, c0:c1]),
        np.ascontiguousarray(labels[r0:r1, c0:c1]),
    )


def _training_data(
    volume: Any,
    ann: npt.NDArray[np.uint8],
    plan: FinetunePlan,
    in_channels: int,
    low: float,
    high: float,
    halo: int = 32,
    guess: Any = None,
) -> tuple[list[Any], list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]]]:
    """Training volumes (one per annotated slice) and validation pairs (image stack, labels).

    A validation pair is the held-out part of a slice with ``halo`` voxels of context around it.
    ``guess(image stack, labels) -> phase ids (0 = unsure)`` (:class:`_Guesses`), when given, fills
    the training slices' voxels that are neither annotated nor held out with guided targets
    (``C + id``, :mod:`~.losses`).
    """
    from napari_tomoseg.core.learn.train import AnnotatedVolume

    half = in_channels // 2
    train: list[Any] = []
    val: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]] = []
    held = set(plan.validation_slices)
    for index in sorted(set(plan.train_slices) | held):
        image = _slice_stack(volume, index, plan.axis, half, low, high)
        labels = _labels_slice(ann, index, plan.axis)
        free = labels == 0  # voxels a guess may fill
        if plan.validation == "band":
            band = band_mask(labels)
            val_labels = np.where(band, labels, 0).astype(np.uint8)
            train_labels = np.where(band, 0, labels).astype(np.uint8)
            free &= ~band
            if val_labels.any():
                val.append(_around_labels(image, val_labels, halo))
        elif index in held:
            val.append(_around_labels(image, labels, halo))
            continue
        else:
            train_labels = labels
        if guess is not None and train_labels.any():
            guessed = guess(image, labels)
            train_labels = np.where(
                free & (guessed > 0), guessed + len(plan.phases), train_labels
            ).astype(np.uint8)
        if train_labels.any():
            # The sampler draws 2D crops along axis 0 of (k, y, x); only the centre plane is labelled.
            stack_labels = np.zeros(image.shape, np.uint8)
            stack_labels[half] = train_labels
            train.append(AnnotatedVolume(image, stack_labels))
    if not train:
        raise ValueError("no annotated voxel is left for training after holding out validation")
    return train, val


def _training_data_3d(
    volume: Any, ann: npt.NDArray[np.uint8], low: float, high: float, crop: int
) -> list[Any]:
    from napari_tomoseg.core.learn.train import AnnotatedVolume
    from napari_tomoseg.core.prep.intensity import apply_range

    nz = np.nonzero(ann)
    region = tuple(
        slice(max(0, int(c.min()) - crop // 2), min(s, int(c.max()) + crop // 2 + 1))
        for c, s in zip(nz, ann.shape, strict=True)
    )
    image = apply_range(np.asarray(volume[region]), low, high)
    return [AnnotatedVolume(image, np.ascontiguousarray(ann[region]))]


# --------------------------------------------------------------------------------------------
# The model to train
# --------------------------------------------------------------------------------------------


def _initial_model(base: Any, plan: FinetunePlan, config: FinetuneConfig) -> Any:
    import torch

    from napari_tomoseg.core.model import (
        InferenceDefaults,
        ModularUNet,
        TomosegModel,
        UNetConfig,
        inflate_to_slices,
    )
    from napari_tomoseg.core.prep.intensity import Normalization

    if base is None:
        mode, _ = finetuned_mode(None, None, config.mode)
        cfg = UNetConfig(
            ndim=3 if mode == "3d" else 2,
            in_channels=config.context_slices if mode == "2.5d" else 1,
            n_phases=len(plan.phases),
            base_filters=config.base_filters,
        )
        torch.manual_seed(config.seed)
        axis = AXIS_NAMES[plan.axis]
        return TomosegModel(
            ModularUNet(cfg),
            plan.phases,
            normalization=Normalization(ring_removal=True),
            defaults=InferenceDefaults(mode=mode, axis=axis, tile=128 if mode == "3d" else 512),
        )
    network = copy.deepcopy(base.network).to("cpu")
    defaults = base.defaults
    mode, extends = finetuned_mode(base.defaults.mode, base.config, config.mode)
    if extends:
        network = inflate_to_slices(network, config.context_slices, spread=INFLATE_SPREAD)
        defaults = replace(defaults, mode=mode)
    if plan.replace_head:
        torch.manual_seed(config.seed)
        old = network.head
        conv = torch.nn.Conv2d if network.cfg.ndim == 2 else torch.nn.Conv3d
        network.head = conv(old.in_channels, len(plan.phases), 1)
        network.cfg = replace(network.cfg, n_phases=len(plan.phases))
    return TomosegModel(
        network,
        plan.phases,
        normalization=base.normalization,
        defaults=defaults,
        provenance={},
    )


def _ranking(labels: list[npt.NDArray[np.uint8]], n_phases: int) -> tuple[Any, list[int]]:
    """``rank(scores) -> float``: the mean held-out Jaccard over the phases with enough held-out
    voxels to rank two models (:data:`MIN_RANKING_VOXELS`; all phases when none has), and the
    indices of the phases left out.

    A pore phase of 0.5 % has a few dozen voxels in the held-out band of one slice; its Jaccard then
    swings by 0.1 between two equally good models and would decide which is kept.
    """
    counts = np.zeros(n_phases, np.int64)
    for lab in labels:
        counts += np.bincount(lab.ravel(), minlength=n_phases + 1)[1 : n_phases + 1]
    enough = counts >= MIN_RANKING_VOXELS
    if not enough.any():
        enough[:] = True
    few = [i for i in range(n_phases) if not enough[i] and counts[i] > 0]

    def rank(scores: Sequence[float]) -> float:
        values = np.asarray(scores, np.float64)[enough]
        values = values[~np.isnan(values)]
        return float(values.mean()) if values.size else float("nan")

    return rank, few


def _predict_labels(
    network: Any, image: npt.NDArray[np.float32], n_phases: int, device: Any
) -> npt.NDArray[np.uint8]:
    """Phase ids (1..C) ``network`` predicts for a slice's image stack ``(k, y, x)``."""
    return (np.argmax(_predict_probs(network, image, n_phases, device), axis=0) + 1).astype(
        np.uint8
    )


def _predict_probs(
    network: Any, image: npt.NDArray[np.float32], n_phases: int, device: Any
) -> npt.NDArray[np.float32]:
    """Phase probabilities ``(C, y, x)`` ``network`` predicts for a slice's image stack ``(k, y, x)``."""
    import torch

    from napari_tomoseg.core.segment import predict_tiled, resolve_precision

    dtype = resolve_precision("auto", torch.device(device))

    def predict(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with (
            torch.inference_mode(),
            torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32),
        ):
            logits = network(torch.from_numpy(batch).to(device))
        return torch.softmax(logits.float(), 1).cpu().numpy()

    probs = predict_tiled(
        image[None],
        predict,
        n_out=n_phases,
        tile=512,
        overlap=32,
        batch_size=1,
        multiple=network.cfg.multiple,
    )[0]
    return probs


def _validator(
    pairs: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]],
    n_phases: int,
    device: Any,
) -> Any:
    """``validate(network) -> per-phase Jaccard`` on the held-out annotations."""
    from napari_tomoseg.core.measure.metrics import ConfusionAccumulator

    def validate(network: Any) -> list[float]:
        acc = ConfusionAccumulator(n_phases)
        for image, labels in pairs:
            acc.update(_predict_labels(network, image, n_phases, device), labels)
        return [float(v) for v in acc.jaccard()]

    return validate


def _sparse(ann: npt.NDArray[np.uint8], plan: FinetunePlan) -> bool:
    """Do the annotations cover less than :data:`SPARSE` of their slices (strokes, not slices)?"""
    slices = set(plan.train_slices) | set(plan.validation_slices)
    plane = int(np.prod([s for a, s in enumerate(ann.shape) if a != plan.axis]))
    return int(np.count_nonzero(ann)) < SPARSE * plane * max(1, len(slices))


def _uncontradicted(
    guessed: npt.NDArray[np.uint8], labels: npt.NDArray[np.uint8], radius: float | None = None
) -> npt.NDArray[np.uint8]:
    """``guessed`` without the guesses of a phase within ``radius`` of an annotated voxel that the
    model guessed as that phase and the annotation corrects.

    A stroke painted across a region the starting model gets wrong says the guesses around it are
    wrong too: they must not pull against the correction it teaches.
    """
    from scipy import ndimage

    radius = GUIDE_RADIUS if radius is None else radius
    out = guessed.copy()
    corrected = (labels > 0) & (guessed > 0) & (guessed != labels)
    for phase in np.unique(guessed[corrected]):
        near = ndimage.distance_transform_edt(~(corrected & (guessed == phase))) <= radius
        out[near & (guessed == phase)] = 0
    return out


class _Guesses:
    """The starting model's guesses for the voxels strokes leave out, and the slices' phase shares.

    ``guesses(image stack, labels) -> phase ids`` for a training slice: the model's phase where it
    is at least :data:`GUIDE_CONFIDENCE` sure and no annotation nearby corrects it
    (:func:`_uncontradicted`), else 0. Each call also counts the slice's phases (annotated voxels
    as annotated, the rest as the model predicts them): :meth:`shares`.
    """

    def __init__(self, network: Any, n_phases: int, device: Any) -> None:
        self.network, self.n_phases, self.device = network, n_phases, device
        self.counts = np.zeros(n_phases + 1, np.int64)

    def __call__(
        self, image: npt.NDArray[np.float32], labels: npt.NDArray[np.uint8]
    ) -> npt.NDArray[np.uint8]:
        was_training = self.network.training
        self.network.eval()
        try:
            probs = _predict_probs(self.network, image, self.n_phases, self.device)
        finally:
            self.network.train(was_training)
        ids = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
        filled = np.where(labels > 0, labels, ids)
        self.counts += np.bincount(filled.ravel(), minlength=self.n_phases + 1)[: self.n_phases + 1]
        ids[probs.max(axis=0) < GUIDE_CONFIDENCE] = 0
        return _uncontradicted(ids, labels)

    def shares(self) -> tuple[float, ...]:
        """Phase shares of the slices seen so far: strokes through every phase over-represent
        the rare ones; the model's predictions fill in the rest of each slice."""
        total = max(1, int(self.counts[1:].sum()))
        return tuple(float(c) / total for c in self.counts[1:])


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def iter_finetune(
    volume: Any,
    annotations: npt.ArrayLike,
    *,
    base: Any = None,
    phases: PhaseTable | None = None,
    config: FinetuneConfig | None = None,
    cancel: CancelToken | None = None,
    device: str = "auto",
) -> Generator[Any, None, FinetuneResult]:
    """Fine-tune ``base`` (a TomosegModel; ``None`` = from scratch) on ``annotations`` of ``volume``.

    Yields :class:`~napari_tomoseg.core.learn.train.TrainProgress` events; returns a
    :class:`FinetuneResult` whose model holds the weights ``config.keep`` asks for (the last ones by
    default), or the starting model when it scores higher on the held-out voxels. Cancelling
    (``cancel.cancel()``) stops after the current step and returns what the run has so far, by the
    same rule.
    """

    from napari_tomoseg.core.learn.train import (
        CropSampler,
        TrainConfig,
        iter_train,
        preload_optimiser,
    )
    from napari_tomoseg.core.model.network import (
        fold_batch_norm,
        receptive_halo,
        unfold_batch_norm,
    )
    from napari_tomoseg.core.segment import resolve_device

    started = time.perf_counter()  # the budget counts the preparation too
    preload_optimiser()  # overlaps the preparation below
    config = config or FinetuneConfig()
    ann = _check_annotations(np.shape(volume), np.asarray(annotations))
    plan = plan_finetune(np.shape(volume), ann, base=base, phases=phases, config=config)
    for note in plan.notes:
        log.warning(note)
    model = _initial_model(base, plan, config)
    net_cfg = model.config
    dev = resolve_device(device)
    # Every slice read for training is checked for NaN / inf (a no-op view for integer volumes).
    volume = finite_checked(volume)
    volume = model.normalization.prepare(volume)  # the model's ring removal, as in inference
    low, high = model.normalization.volume_range(volume)
    n = len(plan.phases)
    if net_cfg.ndim == 3:
        crop = min(plan.crop, 64)
        train_volumes = _training_data_3d(volume, ann, low, high, crop)
        val_pairs: list[Any] = []
        sampler_kw: dict[str, Any] = {"ndim": 3, "crop": crop}
        guesses = None
        if plan.validation != "none":
            plan = replace(plan, validation="none", validation_slices=())
            log.warning("3D fine-tuning keeps the last weights (no held-out validation yet)")
    else:
        # Strokes leave most of their slices unannotated: there the starting model's confident
        # guesses are kept as guided targets (a model with a new output layer has none to give).
        guesses = (
            _Guesses(model.network.to(dev), n, dev)
            if base is not None and not plan.replace_head and _sparse(ann, plan)
            else None
        )
        train_volumes, val_pairs = _training_data(
            volume,
            ann,
            plan,
            net_cfg.in_channels,
            low,
            high,
            halo=receptive_halo(net_cfg),
            guess=guesses,
        )
        sampler_kw = {
            "ndim": 2,
            "in_channels": net_cfg.in_channels,
            "axes": (0,),
            "crop": plan.crop,
        }
    # Phase shares of the slices the strokes were painted on (guesses filling in the rest).
    prior = guesses.shares() if guesses is not None else None
    if guesses is not None and not config.guide > 0:  # they only estimated the phase shares
        for v in train_volumes:
            v.labels[v.labels > n] = 0
    guide = config.guide if guesses is not None and config.guide > 0 else None
    sampler = CropSampler(
        train_volumes,
        n_phases=n,
        rare_fraction=config.rare_fraction,
        augment=config.augment,
        seed=config.seed,
        guided=guide is not None,
        **sampler_kw,
    )
    train_config = TrainConfig(
        crop=sampler.crop,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        loss=config.loss,
        steps=config.steps,
        budget=config.budget,
        warmup=min(20, max(1, (config.steps or 200) // 10)),
        validate_every=config.validate_every,
        patience=config.patience,
        rare_fraction=config.rare_fraction,
        class_weight_power=config.class_weight_power,
        axes=(0,),
        augment=config.augment,
        seed=config.seed,
        optimizer=config.optimizer,
        keep=config.keep,
        class_prior=prior,
        guide=guide,
    )
    validate = _validator(val_pairs, n, dev) if val_pairs else None
    rank, few = _ranking([labels for _, labels in val_pairs], n)
    if validate is not None and few:
        plan = replace(
            plan,
            notes=(
                *plan.notes,
                f"{', '.join(plan.phases.names[i] for i in few)}: too few held-out voxels "
                f"(under {MIN_RANKING_VOXELS}) to tell two models apart; the starting and the "
                "trained model are compared on the other phases",
            ),
        )
    frozen = base is not None and config.freeze_norm
    network = fold_batch_norm(model.network) if frozen else model.network
    result = yield from iter_train(
        network,
        sampler,
        train_config,
        validate=validate,
        # The starting model competes with the steps unless its output layer is new (untrained).
        validate_start=base is not None and not plan.replace_head,
        rank=rank,
        cancel=cancel,
        device=dev,
        started=started,
    )
    model.network = unfold_batch_norm(network) if frozen else network
    model.network.to("cpu").eval()
    notes = list(plan.notes)
    start_scores = (
        {name: float(v) for name, v in zip(plan.phases.names, result.start_validation, strict=True)}
        if result.start_validation is not None
        else None
    )
    kept: Literal["fine-tuned", "start"] = "start" if result.kept_start else "fine-tuned"
    compared = (
        tuple(name for i, name in enumerate(plan.phases.names) if i not in few)
        if start_scores is not None
        else None
    )
    if kept == "start":
        notes.append(
            f"training did not beat the starting model on the held-out voxels (mean Jaccard "
            f"{_mean(start_scores):.3f}): it is returned unchanged; annotate more, or where it is "
            "wrong, and fine-tune again"
        )
    if config.budget is not None and result.steps == 1 and result.seconds > config.budget:
        notes.append(
            f"the budget of {config.budget:g} s is shorter than one training step "
            f"({result.seconds:.1f} s): one step was made"
        )
    for note in notes[len(plan.notes) :]:
        log.warning(note)
    held = held_out_voxels(plan, ann)
    scores = (
        {name: float(s) for name, s in zip(plan.phases.names, result.best_validation, strict=True)}
        if result.best_validation is not None
        else None
    )
    model.provenance = {
        "fine_tuned_from": _describe_base(base),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data_shape": list(np.shape(volume)),
        "annotation_axis": AXIS_NAMES[plan.axis],
        "annotated_slices": len(set(plan.train_slices) | set(plan.validation_slices)),
        "train_slices": list(plan.train_slices),
        "validation": plan.validation,
        "validation_slices": list(plan.validation_slices),
        "annotated_voxels": dict(zip(plan.phases.names, plan.counts, strict=True)),
        "replaced_head": plan.replace_head,
        "steps": result.steps,
        "best_step": result.best_step,
        "seconds": round(result.seconds, 2),
        "stopped": result.stopped,
        "seed": config.seed,
        "config": {k: v for k, v in config.__dict__.items()},
        "validation_jaccard": scores,
        "start_validation_jaccard": start_scores,
        "kept": kept,
        "compared_phases": None if compared is None else list(compared),
        "held_out": held,
        "device": str(dev),
    }
    if base is not None and base.provenance:
        model.provenance["base_provenance"] = base.provenance
    return FinetuneResult(
        model=model,
        validation=scores,
        notes=notes,
        stopped=result.stopped,
        steps=result.steps,
        seconds=result.seconds,
        voxels_seen=result.voxels_seen,
        plan=plan,
        history=result.history,
        start_validation=start_scores,
        kept=kept,
        held_out=held,
        compared=compared,
    )


def _mean(scores: dict[str, float] | None) -> float:
    values = [v for v in (scores or {}).values() if v == v]
    return float(np.mean(values)) if values else float("nan")


def _describe_base(base: Any) -> str:
    if base is None:
        return "scratch"
    from napari_tomoseg.core.model import bundled_model_path

    if base.source is None:
        return "in-memory model"
    try:
        if base.source.resolve() == bundled_model_path().resolve():
            return f"bundled:{base.source.name}"
    except OSError:
        pass
    return str(base.source)


def finetune(volume: Any, annotations: npt.ArrayLike, **kwargs: Any) -> FinetuneResult:
    """Run :func:`iter_finetune` to completion (for scripts and the CLI)."""
    return run_to_completion(iter_finetune(volume, annotations, **kwargs))
