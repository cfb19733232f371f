"""The measure room: numbers about segmentations, with or without a reference.

prediction + reference (0 = ignore) -> :mod:`.metrics` (confusion matrix, per-phase Jaccard, an
accumulator over slabs) -> :mod:`.evaluate` (slab by slab, grey-level :mod:`.baseline` alongside)
-> :mod:`.report` (fractions, volumes, scores as JSON / CSV / text); :mod:`.blobs` finds ring-artifact
blobs and small objects, :mod:`.uncertainty` ranks slices to annotate next.

May import: :mod:`napari_tomoseg.core.phases`, :mod:`napari_tomoseg.core.progress`, the io, prep,
model and segment rooms; numpy, scipy. Never the learn room (learn uses :mod:`.metrics`, not the
other way round), never napari or Qt.
"""

from __future__ import annotations

from napari_tomoseg.core.measure.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    jaccard_from_confusion,
    jaccard_per_phase,
    mean_jaccard,
    phase_fractions,
)

__all__ = [
    "ConfusionAccumulator",
    "confusion_matrix",
    "jaccard_from_confusion",
    "jaccard_per_phase",
    "mean_jaccard",
    "phase_fractions",
]
