"""Volumes bigger than memory: outputs filled block by block, chunk checks, lazy dask views.

prediction blocks -> :func:`streaming_output` (a uint8 zarr array; renamed onto a ``.zarr`` output,
or streamed into a ``.tif`` / ``.npy`` at the end) -> the output appears only when complete
input -> :func:`is_pathological_chunking` -> :func:`rechunked` (a temporary well-chunked copy if needed)
path -> :func:`read_volume_dask` -> dask arrays per resolution level (the napari reader)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from napari_tomoseg.core.io.formats import (
    ZARR_CHUNKS,
    existing_path,
    input_format,
    ome_multiscales,
    open_zarr,
)
from napari_tomoseg.core.io.metadata import check_voxel_size, file_metadata
from napari_tomoseg.core.io.volumes import check_volume, open_volume
from napari_tomoseg.core.io.write import (
    atomic_output,
    check_output_path,
    create_uint8_store,
    remove_path,
    temp_path,
    write_labels,
    write_volume,
)
from napari_tomoseg.core.phases import PhaseTable

__all__ = [
    "MIN_CHUNK_VOXELS",
    "is_pathological_chunking",
    "read_volume_dask",
    "rechunked",
    "storage_chunks",
    "streaming_output",
]

logger = logging.getLogger(__name__)

#: Fewer voxels than this per stored chunk makes block reads crawl (one file per chunk).
MIN_CHUNK_VOXELS = 4096


@contextlib.contextmanager
def streaming_output(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    kind: Literal["labels", "volume"] = "labels",
    phases: PhaseTable | None = None,
    voxel_size: Sequence[float] | None = None,
    chunks: Sequence[int] | None = None,
    overwrite: bool = False,
) -> Iterator[Any]:
    """A uint8 zarr array to fill block by block; it becomes ``path`` only if the block succeeds.

    For a ``.zarr`` output the array is created in a hidden temporary store next to ``path`` and
    renamed onto it on success: ``zarr.open_array(path)`` then reads it, with the phase table and
    voxel size in ``attrs["tomoseg"]`` and ``dimension_names`` ``("z", "y", "x")``. For ``.tif`` /
    ``.npy`` outputs the blocks go to a hidden scratch zarr store, streamed into the file (slab by
    slab, atomically) at the end and then deleted. On any error or ``KeyboardInterrupt`` nothing
    that looks complete is left behind and an existing output is untouched.

    Parameters
    ----------
    path
        ``.zarr``, ``.tif``/``.tiff`` or ``.npy`` output; its folder must exist.
    shape
        ``(z, y, x)``.
    kind
        ``labels`` (phase ids, written with :func:`write_labels`) or ``volume`` (any uint8 map,
        e.g. an uncertainty map, written with :func:`write_volume`).
    phases, voxel_size
        Metadata stored with the output.
    chunks
        zarr chunk shape; align it with the blocks you write (each chunk written once).
    overwrite
        Replace an existing output.

    Yields
    ------
    zarr.Array
        uint8, zeros until written.
    """
    p = check_output_path(path, overwrite=overwrite)
    shp = tuple(int(s) for s in shape)
    if len(shp) != 3 or 0 in shp:
        raise ValueError(f"output shape must be 3 positive sizes (z, y, x), got {shp}")
    voxel = check_voxel_size(voxel_size)
    meta = file_metadata(kind, shp, voxel, phases if kind == "labels" else None)

    def create(store: Path) -> Any:
        return create_uint8_store(store, shp, chunks or ZARR_CHUNKS, meta)

    if p.suffix.lower() == ".zarr":
        with atomic_output(p, overwrite=overwrite, folder=True) as tmp:
            yield create(tmp)
        return
    scratch = temp_path(p.with_suffix(".zarr"), "scratch")
    os.mkdir(scratch)
    try:
        arr = create(scratch)
        yield arr
        if kind == "labels":
            write_labels(p, arr, phases=phases, voxel_size=voxel, overwrite=overwrite)
        else:
            write_volume(p, arr, voxel_size=voxel, overwrite=overwrite, compress=True)
    finally:
        remove_path(scratch)


def storage_chunks(arr: Any) -> tuple[int, ...] | None:
    """The stored chunk shape of a zarr array or HDF5 dataset (None: contiguous or not chunked)."""
    chunks = getattr(arr, "chunks", None)
    if chunks is None or not isinstance(chunks, tuple):
        return None
    if chunks and isinstance(chunks[0], tuple):  # a dask array: chunks per axis
        return tuple(int(c[0]) for c in chunks)
    return tuple(int(c) for c in chunks)


def is_pathological_chunking(arr: Any) -> bool:
    """True when ``arr`` is stored in chunks so small (fewer than 4096 voxels) that reading crawls."""
    chunks = storage_chunks(arr)
    if chunks is None or isinstance(arr, np.ndarray):
        return False
    return int(np.prod(chunks)) < min(MIN_CHUNK_VOXELS, int(np.prod(arr.shape)))


@contextlib.contextmanager
def rechunked(arr: Any, *, folder: str | os.PathLike[str], name: str = "volume") -> Iterator[Any]:
    """``arr`` itself, or, if its chunking is pathological, a temporary well-chunked zarr copy.

    The copy (chunks of 16 x 512 x 512, made slab by slab in one pass) lives in a hidden folder in
    ``folder`` and is deleted on exit; a warning says so and how to avoid it.
    """
    if not is_pathological_chunking(arr):
        yield arr
        return
    chunks = storage_chunks(arr)
    logger.warning(
        "%s is stored in chunks of %s voxels: far too small to read efficiently; copying it once "
        "into a temporary store with chunks %s (re-save the volume with larger chunks, e.g. "
        "64x256x256, to skip this)",
        name,
        "x".join(map(str, chunks or ())),
        "x".join(map(str, ZARR_CHUNKS)),
    )
    tmp = temp_path(Path(folder) / Path(name).name, "rechunk").with_suffix(".zarr")
    try:
        shape = tuple(int(s) for s in arr.shape)
        copy = zarr.create_array(
            store=str(tmp),
            shape=shape,
            dtype=arr.dtype,
            chunks=tuple(min(c, s) for c, s in zip(ZARR_CHUNKS, shape, strict=True)),
        )
        depth = copy.chunks[0]
        for z0 in range(0, shape[0], depth):
            copy[z0 : z0 + depth] = np.asarray(arr[z0 : z0 + depth])
        yield copy
    finally:
        remove_path(tmp)


def read_volume_dask(
    path: str | os.PathLike[str], *, dataset: str | None = None, check: bool = True
) -> list[Any]:
    """The volume at ``path`` as lazy dask arrays, one per resolution level (full resolution first).

    For the napari reader: nothing is read until a slice is shown. An OME-Zarr (NGFF 0.4 / 0.5)
    multiscale group gives all its levels (``dataset`` is then not needed); any other zarr or HDF5
    volume, a TIFF stack (memory-mapped or page by page) or a folder of TIFF slices gives one
    level. Chunks follow the storage (one z-slice per chunk for TIFF). HDF5 files stay open while
    the arrays are referenced.

    Parameters
    ----------
    path
        Any input :func:`read_volume` accepts.
    dataset
        Array inside a zarr group or HDF5 file holding several.
    check
        Run :func:`check_volume` on the full-resolution level (a few sampled slices).

    Returns
    -------
    list of dask.array.Array
        3D ``(z, y, x)`` arrays, each level smaller than the previous one.
    """
    import dask.array as da

    p = existing_path(path)
    levels: list[Any] = []
    if input_format(p) == "zarr" and dataset is None:
        levels = _ome_levels(p)
    if not levels:
        levels = [open_volume(p, dataset=dataset)]
    out = []
    for arr in levels:
        chunks = storage_chunks(arr)
        if chunks is None or isinstance(arr, np.ndarray):
            chunks = (1, *arr.shape[1:])  # one slice per chunk: memmaps and TIFF pages
        elif is_pathological_chunking(arr):
            logger.warning(
                "%s is stored in tiny chunks %s; viewing it will be slow (dask regroups them)",
                p,
                chunks,
            )
        darr = da.from_array(arr, chunks=chunks, asarray=True, fancy=False, name=False)
        if is_pathological_chunking(arr):
            darr = darr.rechunk((16, 512, 512))
        out.append(darr)
    if check:
        check_volume(levels[0], name=str(p))
    return out


def _ome_levels(path: Path) -> list[Any]:
    """Arrays of an OME-Zarr multiscale group, full resolution first ([] if not one)."""
    node = open_zarr(path)
    if isinstance(node, zarr.Array):
        return []
    for ms in ome_multiscales(node):
        arrays = []
        for ds in ms.get("datasets", []):
            member = node.get(ds.get("path", ""))
            if isinstance(member, zarr.Array) and member.ndim == 3:
                arrays.append(member)
        if arrays:
            return arrays
    return []
