"""Headless engine of napari-tomoseg: numpy, torch, tifffile; never napari or Qt.

volume -> normalise (robust percentiles) -> tiles -> U-Net -> blended probabilities -> uint8 phases.

Importing this package imports no torch: the torch-using modules (:mod:`.model`, :mod:`.inference`,
:mod:`.losses`, :mod:`.train`) are imported by the caller when needed.
"""
