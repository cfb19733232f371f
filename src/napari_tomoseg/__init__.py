"""napari-tomoseg: segment tomography volumes of materials into phases with a fine-tunable U-Net.

Importing this package is cheap: it imports neither torch nor napari/Qt. The headless engine is
in :mod:`napari_tomoseg.core`, the command line in :mod:`napari_tomoseg.cli`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
