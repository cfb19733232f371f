"""napari-tomoseg: segment tomography volumes of materials into phases with a fine-tunable U-Net.

Importing this package is cheap: it imports neither torch nor napari/Qt. The headless engine is
in :mod:`napari_tomoseg.core`, the command line in :mod:`napari_tomoseg.cli`.
"""

from napari_tomoseg.core.threads import set_openmp_waiting

__version__ = "0.1.0"

# Before anything imports torch: threads that wait for a late one soon sleep instead of spinning,
# so that a program busy on another core delays a segmentation far less. A policy the user set
# (OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME) is kept. See core/threads.py.
set_openmp_waiting()

__all__ = ["__version__"]
