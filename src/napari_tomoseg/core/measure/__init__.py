"""The measure room: numbers about segmentations, with or without a reference.

prediction + reference (0 = ignore) -> :mod:`.metrics` (confusion matrix, per-phase Jaccard, an
accumulator over slabs) -> :mod:`.evaluate` (slab by slab, grey-level :mod:`.baseline` alongside)
-> :mod:`.report` (fractions, volumes, scores as JSON / CSV / text); :mod:`.blobs` finds ring-artifact
blobs and small objects, :mod:`.uncertainty` ranks slices to annotate next.
labels (no reference) -> :mod:`.fractions`, :mod:`.objects`, :mod:`.thickness`, :mod:`.orientation`,
:mod:`.surfaces` (in :mod:`.units`; checks in :mod:`.inputs`) -> :mod:`.measurements` (all in one run).

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

# Measures of a segmentation (no reference needed): fractions and profiles (streaming), objects,
# local thickness, fibre orientation, surfaces; units. Each has an ``iter_*`` generator (progress,
# cancel) and a plain wrapper that runs it to the end.
from napari_tomoseg.core.measure.fractions import (
    PhaseFractions,
    PhaseProfile,
    iter_fractions,
    measure_fractions,
)
from napari_tomoseg.core.measure.inputs import MeasureProgress
from napari_tomoseg.core.measure.objects import (
    ObjectTable,
    SizeDistribution,
    iter_objects,
    measure_objects,
)
from napari_tomoseg.core.measure.orientation import (
    FibreOrientation,
    fibre_orientation,
    iter_fibre_orientation,
)
from napari_tomoseg.core.measure.surfaces import (
    SurfaceAreas,
    iter_surface_areas,
    surface_areas,
)
from napari_tomoseg.core.measure.thickness import (
    LocalThickness,
    iter_local_thickness,
    local_thickness,
)
from napari_tomoseg.core.measure.units import Units, parse_axis, parse_voxel_size

__all__ += [
    "FibreOrientation",
    "LocalThickness",
    "MeasureProgress",
    "ObjectTable",
    "PhaseFractions",
    "PhaseProfile",
    "SizeDistribution",
    "SurfaceAreas",
    "Units",
    "fibre_orientation",
    "iter_fibre_orientation",
    "iter_fractions",
    "iter_local_thickness",
    "iter_objects",
    "iter_surface_areas",
    "local_thickness",
    "measure_fractions",
    "measure_objects",
    "parse_axis",
    "parse_voxel_size",
    "surface_areas",
]
