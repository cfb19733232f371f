"""Label volumes too big to hold in memory: chunked zarr stores that napari layers read and paint into
directly, and summaries that read only the chunks that hold something.

A 2048^3 volume's annotations are 8 GiB as a dense uint8 array, yet a user annotates a handful of
slices. In a zarr store whose fill value is 0, a chunk that was never written is never stored (zarr
also skips writing chunks equal to the fill value), so

    summarize_labels(store) -> reads the stored chunks only -> voxels per phase, annotated slices

costs time and memory in proportion to what was annotated, not to the volume. The same functions take
numpy arrays (read in bounded slabs), so the widgets have one code path for small and big volumes.

The stores are plain zarr v3 arrays with napari-tomoseg's metadata (``attrs["tomoseg"]``: kind, shape,
phase table, voxel size), so :func:`napari_tomoseg.core.io.read_labels` and ``zarr.open_array`` read them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import zarr

from napari_tomoseg.core.io.metadata import METADATA_KEY, check_voxel_size, file_metadata
from napari_tomoseg.core.io.write import create_uint8_store
from napari_tomoseg.core.phases import PhaseTable

__all__ = [
    "LABEL_CHUNKS",
    "LabelSummary",
    "create_store",
    "in_memory_limit",
    "is_store",
    "needs_store",
    "open_store",
    "set_store_phases",
    "stored_regions",
    "summarize_labels",
]

#: Chunks of the label stores: 8 slices deep (the depth of an inference slab, so each chunk is written
#: once) and 256 x 256 in-plane (a 2048^2 slice is 64 chunks of 512 KiB: quick to show and to repaint).
LABEL_CHUNKS = (8, 256, 256)

#: Volumes with more voxels than this get their label layers (prediction, uncertainty, annotations)
#: in zarr stores on disk instead of in memory; ``NAPARI_TOMOSEG_IN_MEMORY_LIMIT`` (voxels) overrides it.
DEFAULT_IN_MEMORY_LIMIT = 2**28

# Voxels read at once when summarising an in-memory array: bounded temporaries for any size.
_SLAB_VOXELS = 1 << 24

StoreKind = Literal["labels", "volume"]


def in_memory_limit() -> int:
    """The largest volume (in voxels) whose label layers are kept in memory."""
    raw = os.environ.get("NAPARI_TOMOSEG_IN_MEMORY_LIMIT")
    if raw is None or not raw.strip():
        return DEFAULT_IN_MEMORY_LIMIT
    try:
        return max(0, int(float(raw)))
    except ValueError as err:
        raise ValueError(
            f"NAPARI_TOMOSEG_IN_MEMORY_LIMIT must be a number of voxels, got {raw!r}"
        ) from err


def needs_store(shape: Sequence[int]) -> bool:
    """True if label layers of a volume of ``shape`` belong in on-disk stores (see
    :data:`DEFAULT_IN_MEMORY_LIMIT`)."""
    return int(np.prod([int(s) for s in shape], dtype=np.int64)) > in_memory_limit()


def is_store(path: str | os.PathLike[str], kind: StoreKind | None = None) -> bool:
    """True if ``path`` is a zarr array written by napari-tomoseg (of ``kind`` if given): safe to
    reopen, and to replace by a newer one."""
    return _open_ours(Path(path), kind, "r") is not None


def _open_ours(p: Path, kind: StoreKind | None, mode: Literal["r", "r+"]) -> Any | None:
    """The zarr array at ``p`` if napari-tomoseg wrote it (of ``kind`` if given), else None."""
    if not (p.is_dir() and (p / "zarr.json").is_file()):
        return None
    try:
        arr = zarr.open_array(str(p), mode=mode)
    except (ValueError, OSError, TypeError, KeyError):
        return None
    meta = arr.attrs.get(METADATA_KEY)
    if not isinstance(meta, dict) or meta.get("format") != "napari-tomoseg":
        return None
    return arr if kind is None or meta.get("kind") == kind else None


def create_store(
    path: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    kind: StoreKind = "labels",
    phases: PhaseTable | None = None,
    voxel_size: Sequence[float] | None = None,
    chunks: Sequence[int] = LABEL_CHUNKS,
) -> Any:
    """A new uint8 zarr store at ``path``, zeros (nothing stored) until painted.

    Raises
    ------
    FileExistsError
        If ``path`` exists: stores are never replaced here (reopen them with :func:`open_store`).
    """
    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{p} exists already; open it instead of creating it")
    shp = tuple(int(s) for s in shape)
    if len(shp) != 3 or min(shp) < 1:
        raise ValueError(f"a label store needs a 3D shape (z, y, x), got {shp}")
    meta = file_metadata(kind, shp, check_voxel_size(voxel_size), phases)
    return create_uint8_store(p, shp, chunks, meta)


def open_store(
    path: str | os.PathLike[str],
    *,
    shape: Sequence[int] | None = None,
    kind: StoreKind | None = None,
    mode: Literal["r", "r+"] = "r+",
) -> Any:
    """Reopen a store napari-tomoseg wrote (for painting with ``mode="r+"``).

    Raises
    ------
    ValueError
        If ``path`` is not such a store, or its shape differs from ``shape``.
    """
    p = Path(path)
    arr = _open_ours(p, kind, mode)
    if arr is None:
        what = f"a napari-tomoseg {kind} store" if kind else "a napari-tomoseg store"
        raise ValueError(f"{p} is not {what}; move it away or choose another folder")
    if shape is not None and tuple(arr.shape) != tuple(int(s) for s in shape):
        raise ValueError(
            f"{p} holds a volume of shape {tuple(arr.shape)}, not {tuple(shape)}: it belongs to "
            "another volume; move it away or choose another folder"
        )
    return arr


def store_phases(arr: Any) -> PhaseTable | None:
    """The phase table kept in a store's metadata, if any."""
    meta = arr.attrs.get(METADATA_KEY)
    raw = meta.get("phases") if isinstance(meta, dict) else None
    return PhaseTable.from_json(raw) if raw else None


def set_store_phases(arr: Any, phases: PhaseTable) -> None:
    """Record ``phases`` in a store's metadata (the voxels are written as they are painted)."""
    meta = dict(arr.attrs.get(METADATA_KEY) or {})
    meta["phases"] = phases.to_json()
    arr.attrs[METADATA_KEY] = meta


def _is_zarr_array(arr: Any) -> bool:
    return isinstance(arr, zarr.Array)


def stored_regions(arr: Any) -> Iterator[tuple[slice, slice, slice]]:
    """The regions of ``arr`` that may hold non-zero voxels.

    For a zarr array: the chunks that are stored (a never-painted chunk is all fill value). For
    anything else: the whole array, in z-slabs of bounded size.
    """
    shape = tuple(int(s) for s in arr.shape)
    if _is_zarr_array(arr) and arr.fill_value == 0:
        yield from _stored_chunks(arr)
        return
    depth = max(1, _SLAB_VOXELS // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], depth):
        yield (slice(z0, min(shape[0], z0 + depth)), slice(0, shape[1]), slice(0, shape[2]))


def _stored_chunks(arr: Any) -> Iterator[tuple[slice, slice, slice]]:
    from zarr.core.sync import sync

    async def keys() -> list[str]:
        return [k async for k in arr.store_path.store.list_prefix(arr.store_path.path)]

    prefix = arr.store_path.path
    stored = {k[len(prefix) :].lstrip("/") if prefix else k for k in sync(keys())}
    shape = tuple(int(s) for s in arr.shape)
    chunks = tuple(int(c) for c in arr.chunks)
    grid = [range(-(-s // c)) for s, c in zip(shape, chunks, strict=True)]
    for i in grid[0]:
        for j in grid[1]:
            for k in grid[2]:
                if arr.metadata.encode_chunk_key((i, j, k)) in stored:
                    yield tuple(  # type: ignore[misc]
                        slice(g * c, min(s, (g + 1) * c))
                        for g, c, s in zip((i, j, k), chunks, shape, strict=True)
                    )


@dataclass(frozen=True)
class LabelSummary:
    """What a label volume holds: voxels per id and, along each axis, which ids each slice holds.

    ``voxels[i]``: voxels with id ``i`` in the regions read (id 0 only counts voxels in stored chunks
    of a zarr store, so use the non-zero ids). ``presence[axis][s, i]``: slice ``s`` along ``axis``
    holds id ``i``.
    """

    voxels: npt.NDArray[np.int64]
    presence: tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]

    @property
    def top_id(self) -> int:
        """The largest id present (0 if nothing is labelled)."""
        nz = np.flatnonzero(self.voxels[1:])
        return int(nz[-1]) + 1 if nz.size else 0

    @property
    def labelled(self) -> int:
        """Voxels with a non-zero id."""
        return int(self.voxels[1:].sum())

    def slices(self, axis: int = 0) -> npt.NDArray[np.intp]:
        """Indices of the slices along ``axis`` that hold any non-zero id."""
        return np.flatnonzero(self.presence[axis][:, 1:].any(axis=1))

    def slices_per_id(self, axis: int = 0) -> npt.NDArray[np.int64]:
        """For each id, the number of slices along ``axis`` holding it."""
        return self.presence[axis].sum(axis=0).astype(np.int64)


def summarize_labels(labels: Any, *, n_ids: int | None = None) -> LabelSummary:
    """Count the voxels of each id and find the slices holding each, along all three axes.

    Reads only the stored chunks of a zarr store (see :func:`stored_regions`), numpy arrays in slabs.

    Parameters
    ----------
    labels
        3D integer array (numpy, zarr, or anything sliceable into numpy) with ids ``0..255``.
    n_ids
        Report ids ``0..n_ids`` at least (the phase count); higher ids present are reported too.
    """
    shape = tuple(int(s) for s in labels.shape)
    if len(shape) != 3:
        raise ValueError(f"labels must be a 3D volume, got shape {shape}")
    width = max(256, (n_ids or 0) + 1)
    voxels = np.zeros(width, np.int64)
    presence = tuple(np.zeros((s, width), bool) for s in shape)
    for region in stored_regions(labels):
        block = np.asarray(labels[region])
        if block.dtype.kind not in "iub":
            raise ValueError(f"labels must hold integer ids, got dtype {block.dtype}")
        if block.size and (int(block.min()) < 0 or int(block.max()) >= width):
            raise ValueError(f"labels hold ids outside 0..{width - 1}")
        counts = np.bincount(block.ravel(), minlength=width)
        voxels += counts
        for i in np.flatnonzero(counts):
            hit = block == i
            for axis in range(3):
                other = tuple(a for a in range(3) if a != axis)
                presence[axis][region[axis], i] |= hit.any(axis=other)
    top = max(int(np.flatnonzero(voxels)[-1]) if voxels.any() else 0, n_ids or 0)
    return LabelSummary(
        voxels=voxels[: top + 1].copy(),
        presence=tuple(p[:, : top + 1].copy() for p in presence),  # type: ignore[arg-type]
    )
