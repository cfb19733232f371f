"""Headless engine of napari-tomoseg: numpy, scipy, tifffile, zarr and torch; never napari or Qt.

volume -> io (read, check) -> prep (rings, grey range; once) -> segment (regions -> tiles -> model's
U-Net -> probabilities -> uint8 phases -> one writer) -> io (label file) -> measure (scores, fractions)
annotations -> learn (crops -> U-Net weights) -> model (a self-describing model file)

Rooms, imports flowing one way (a room imports only from rooms listed before it):

==============  ======================================================================  =============
room            holds                                                                   torch
==============  ======================================================================  =============
``phases``      the phase table (ids 1..C, names, colours)                              no
``progress``    typed progress events, the cancel token                                 no
``io``          volumes and labels in and out of files, label stores for big volumes    no
``prep``        ring removal, robust grey range, field-of-view mask                     no
``phantom``     synthetic composites with ground truth                                  no
``model``       the modular U-Net, modes and axes, self-describing model files          yes
``segment``     device, predictor, tiling, memory plan, the segmentation pipeline       yes
``learn``       losses, augmentation, training, fine-tuning (validates via segment)     yes
``measure``     metrics, evaluation, reports, uncertainty, baseline, blobs              partly
==============  ======================================================================  =============

``learn`` and ``measure`` both sit above ``segment``; ``learn`` may use ``measure.metrics``, never the
other way round. Importing this package, or io, prep, phantom, phases and progress, imports no torch.
``tests/test_architecture.py`` checks these rules; ``docs/architecture.md`` draws them.
"""
