"""The phantom room: synthetic volumes with exact ground truth, for tests, demos and training.

:class:`~.composite.PhantomConfig` + seed -> :func:`~.composite.make_phantom` (fibres, pores,
partial volume, fringes, rings, noise) -> :class:`~.composite.Phantom` (``volume`` uint8 / uint16,
``labels`` 1 matrix / 2 fibre / 3 pore); :func:`~.composite.random_config` draws varied configs.
:func:`~.strokes.stroke_annotations` turns a labelled slice into thin strokes through each phase, the
sparse annotations a user paints.

May import: :mod:`napari_tomoseg.core.phases` and :mod:`napari_tomoseg.core.progress`; numpy, scipy
(scikit-image inside the functions that need it).
Never torch, napari or Qt, and no other room: segmentation and training never depend on phantoms.
"""

from __future__ import annotations

from napari_tomoseg.core.phantom.composite import (
    RANDOM_CONFIG_RANGES,
    Phantom,
    PhantomConfig,
    make_phantom,
    random_config,
)
from napari_tomoseg.core.phantom.strokes import stroke_annotations

__all__ = [
    "RANDOM_CONFIG_RANGES",
    "Phantom",
    "PhantomConfig",
    "make_phantom",
    "random_config",
    "stroke_annotations",
]
