"""The learn room: training a network on sparse annotations, from scratch or by fine-tuning.

annotations (0 = not annotated, 1..C) -> :mod:`.train` (crops where annotations are, rare phases
oversampled, :mod:`.augment` dihedral and intensity changes, :mod:`.losses` masked cross-entropy and
soft Jaccard, :mod:`.parallel` each batch split over the CPU's cores, fused AdamW) -> :mod:`.finetune`
(a base model; held-out voxels recorded and scored through segment's tiled prediction; the starting
model kept unless training beats it) -> a :class:`~napari_tomoseg.core.model.TomosegModel` to save.

Long runs are generators of progress events with a cancel token (:func:`~.train.iter_train`,
:func:`~.finetune.iter_finetune`); :func:`~.train.fit` and :func:`~.finetune.finetune` run them to
the end. Importing this package imports no torch; its modules do.

May import: :mod:`napari_tomoseg.core.phases`, :mod:`napari_tomoseg.core.progress`, the io, prep,
model and segment rooms, and :mod:`napari_tomoseg.core.measure.metrics` (validation scores); torch,
numpy. Never napari or Qt; nothing below it imports learn.
"""
