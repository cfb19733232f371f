"""What the dock widgets of one viewer share, and the signals through which they talk.

widget A changes something -> :class:`ViewerState` attribute + signal -> widget B, connected to the signal, reacts.
No widget looks another up: "Segment again" after fine-tuning is a ``segment_requested`` signal, the held-out
voxels of the last fine-tuning and the last evaluation are attributes any widget may read.
"""

from __future__ import annotations

import weakref
from typing import Any

from psygnal import Signal

from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable

__all__ = ["HELD_OUT_KEY", "ViewerState", "held_out_metadata", "state_for"]

#: Key of an annotations layer's ``metadata`` recording what the fine-tuning that used it held out.
HELD_OUT_KEY = "tomoseg_held_out"


def held_out_metadata(result: Any, model: str) -> dict[str, Any]:
    """What a fine-tuning run records on its annotations layer (``metadata[HELD_OUT_KEY]``).

    The core's record of the held-out voxels (``result.held_out``: axis, kind, slices and, for bands,
    their columns; ``kind`` is ``"none"`` when nothing was held out), the slices it trained on and
    the name of the model it made, so the Evaluate widget can score only the held-out voxels and
    count the trained-on ones.
    """
    plan = result.plan
    axis = "zyx"[int(plan.axis)]
    record = (
        dict(result.held_out) if result.held_out else {"axis": axis, "kind": "none", "slices": []}
    )
    record["train_slices"] = [int(i) for i in plan.train_slices]
    record["model"] = model
    return record


class ViewerState:
    """State the napari-tomoseg widgets of one viewer share.

    Attributes
    ----------
    phases : PhaseTable
        The phase table of the annotations (default: the bundled model's).
    models : dict[str, Any]
        Models in memory by display name (e.g. a fine-tuned one not yet saved), oldest first.
    last_finetune : Any
        The result of the last fine-tuning run (its model, held-out voxels, scores), or None.
    last_finetune_name : str or None
        The name under which that run's model is in :attr:`models`.
    last_evaluation : Any
        The last evaluation (per-phase Jaccard, confusion matrix, fractions), or None.
    uncertainty, slice_scores, uncertainty_image
        The last segmentation's per-voxel uncertainty (float16 in memory, or a uint8 zarr store holding
        255 x entropy for a big volume), its per-slice means along each axis and the image layer's name.
    """

    phases_changed = Signal(object)  # PhaseTable
    models_changed = Signal()
    finetuned = Signal(object)  # the fine-tuning result
    evaluated = Signal(object)  # the evaluation
    segment_requested = Signal(str)  # a model's display name: segment the current image with it

    def __init__(self) -> None:
        self.phases: PhaseTable = COMPOSITE_PHASES
        self.models: dict[str, Any] = {}
        self.last_finetune: Any | None = None
        self.last_finetune_name: str | None = None
        self.last_evaluation: Any | None = None
        self.uncertainty: Any | None = None
        self.slice_scores: Any | None = None
        self.uncertainty_image: str | None = None

    def set_phases(self, phases: PhaseTable) -> None:
        """Use ``phases`` for new annotations and tell the widgets (only when it changed)."""
        if phases != self.phases:
            self.phases = phases
            self.phases_changed.emit(phases)

    def add_model(self, name: str, model: Any) -> None:
        """Keep ``model`` in memory under ``name`` (replacing one of that name) and tell the widgets."""
        self.models[name] = model
        self.models_changed.emit()

    def set_finetune(self, result: Any, name: str | None = None) -> None:
        """Record the last fine-tuning run (its model kept as ``name``) and tell the widgets."""
        self.last_finetune = result
        self.last_finetune_name = name
        self.finetuned.emit(result)

    def set_evaluation(self, evaluation: Any) -> None:
        self.last_evaluation = evaluation
        self.evaluated.emit(evaluation)


_STATES: weakref.WeakKeyDictionary[Any, ViewerState] = weakref.WeakKeyDictionary()


def state_for(viewer: Any) -> ViewerState:
    """The :class:`ViewerState` of ``viewer`` (created on first use, forgotten with the viewer)."""
    s = _STATES.get(viewer)
    if s is None:
        s = ViewerState()
        _STATES[viewer] = s
    return s
