"""The io room: grey volumes and phase-label volumes in and out of files, checked at the boundary.

path -> :func:`read_volume` (format chosen by file ending, :func:`check_volume`) -> array or lazy array
labels -> :func:`write_labels` (uint8, phases + voxel size in the metadata, atomic) -> file
file -> :func:`read_label_phases` / :func:`read_voxel_size` -> the metadata back

========================  =================================  =====================================
format                    read (``lazy=True`` returns)       write
========================  =================================  =====================================
``.tif`` / ``.tiff``      3D stack (``np.memmap`` if the     ImageJ hyperstack (uint8/uint16/
                          data are contiguous, else a        float32 below 4 GB) or tifffile's
                          :class:`LazySliceStack`)           shaped (Big)TIFF; zlib for labels
folder of ``.tif`` files  one 2D slice per file, natural     --
                          order (:class:`LazySliceStack`)
``.npy``                  ``np.memmap`` (never unpickles)    ``.npy``
``.zarr``                 ``zarr.Array``                     a plain zarr v3 array
``.h5`` / ``.hdf5``       ``h5py.Dataset`` (needs h5py)      --
========================  =================================  =====================================

Modules, lowest first:

- :mod:`.formats`: endings, opening TIFF and zarr files with clear errors, OME-Zarr layout;
- :mod:`.metadata`: napari-tomoseg's metadata block, voxel sizes and units, phase tables in files;
- :mod:`.volumes`: one reader per format, :class:`LazySliceStack`, :func:`read_volume`,
  :func:`read_labels`, :func:`check_volume`;
- :mod:`napari_tomoseg.core.checks` (re-exported here): NaN / inf found where blocks are read
  (:func:`finite_checked`), memory checked before a big read (:func:`check_fits_memory`);
- :mod:`.write`: :func:`check_output_path`, :func:`check_not_input`, stale temporaries, atomic writers, :func:`write_labels`, :func:`write_volume`,
  the uint8 zarr store constructor;
- :mod:`.streaming`: outputs written block by block, chunk checks, lazy dask views;
- :mod:`.labelstore`: label volumes too big for memory (zarr stores napari paints into);
- :mod:`.remap`: another tool's label ids onto a phase table.

Every writer writes to a hidden temporary file (or folder) next to the output and renames it into
place only when complete. Voxel sizes are ``(z, y, x)`` in micrometres throughout.

May import: :mod:`napari_tomoseg.core.phases` and :mod:`napari_tomoseg.core.progress`; numpy,
tifffile, zarr, h5py, dask (lazily). Never torch, never napari or Qt, and no other room of the core:
everything else reads and writes files through here.
"""

from __future__ import annotations

from napari_tomoseg.core.checks import (
    FiniteCheckedVolume,
    InsufficientMemoryError,
    NonFiniteError,
    available_memory,
    check_finite,
    check_fits_memory,
    finite_checked,
)
from napari_tomoseg.core.io.formats import (
    READ_FORMATS,
    TIFF_SUFFIXES,
    WRITE_SUFFIXES,
    is_zarr_folder,
)
from napari_tomoseg.core.io.metadata import (
    METADATA_KEY,
    check_voxel_size,
    file_metadata,
    read_label_phases,
    read_voxel_size,
)
from napari_tomoseg.core.io.streaming import (
    MIN_CHUNK_VOXELS,
    is_pathological_chunking,
    read_volume_dask,
    rechunked,
    storage_chunks,
    streaming_output,
)
from napari_tomoseg.core.io.volumes import (
    LazySliceStack,
    VolumeLike,
    check_volume,
    open_volume,
    read_labels,
    read_volume,
)
from napari_tomoseg.core.io.write import (
    TEMP_MARK,
    OutputIsInputError,
    check_not_input,
    check_output_path,
    check_writable_folder,
    create_uint8_store,
    remove_stale_temporaries,
    temp_path,
    write_labels,
    write_volume,
)

__all__ = [
    "METADATA_KEY",
    "MIN_CHUNK_VOXELS",
    "READ_FORMATS",
    "TEMP_MARK",
    "TIFF_SUFFIXES",
    "WRITE_SUFFIXES",
    "FiniteCheckedVolume",
    "InsufficientMemoryError",
    "LazySliceStack",
    "NonFiniteError",
    "OutputIsInputError",
    "VolumeLike",
    "available_memory",
    "check_finite",
    "check_fits_memory",
    "check_not_input",
    "check_output_path",
    "check_volume",
    "check_voxel_size",
    "check_writable_folder",
    "create_uint8_store",
    "file_metadata",
    "finite_checked",
    "is_pathological_chunking",
    "is_zarr_folder",
    "open_volume",
    "read_label_phases",
    "read_labels",
    "read_volume",
    "read_volume_dask",
    "read_voxel_size",
    "rechunked",
    "remove_stale_temporaries",
    "storage_chunks",
    "streaming_output",
    "temp_path",
    "write_labels",
    "write_volume",
]
