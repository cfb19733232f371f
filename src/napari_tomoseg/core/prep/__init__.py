"""The prep room: what is done to a grey volume before a network sees it, once per volume.

volume -> :mod:`.rings` (ring artifacts measured around the rotation axis, subtracted lazily slice
by slice) -> :mod:`.intensity` (robust grey range from a subsample, :class:`~.intensity.Normalization`)
-> values in 0..1 per block; :mod:`.mask` finds the cylindrical field of view (voxels left at 0).

Segmentation (:mod:`napari_tomoseg.core.segment`) and training (:mod:`napari_tomoseg.core.learn`)
call these once per volume, never per tile: per-tile statistics put seams into a segmentation.

May import: :mod:`napari_tomoseg.core.phases`, :mod:`napari_tomoseg.core.progress` and
:mod:`napari_tomoseg.core.io`; numpy, scipy. Never torch, never napari or Qt, and never the rooms
above it (model, segment, learn, measure).
"""
