"""Read and write grey volumes and phase-label volumes, checked at the boundary.

path -> :func:`read_volume` (format chosen by file ending, :func:`check_volume`) -> array or lazy array
labels -> :func:`write_labels` (uint8, phases + voxel size in the metadata, atomic) -> file
file -> :func:`read_label_phases` / :func:`read_voxel_size` -> the metadata back

Formats are registered by ending in two small tables (``_READERS``, ``_WRITERS``), nnU-Net style:

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

Every writer writes to a hidden temporary file (or folder) next to the output and renames it into
place only when complete: an interrupted or failed write (disk full) leaves neither a partial output
nor a damaged existing file. Existing outputs are replaced only with ``overwrite=True``.

Voxel sizes are ``(z, y, x)`` in micrometres throughout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import shutil
import struct
import threading
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias, overload

import numpy as np
import numpy.typing as npt
import tifffile
import zarr

from napari_tomoseg.core.phases import PhaseTable

__all__ = [
    "READ_FORMATS",
    "WRITE_SUFFIXES",
    "LazySliceStack",
    "VolumeLike",
    "check_output_path",
    "check_volume",
    "read_label_phases",
    "read_volume",
    "read_voxel_size",
    "write_labels",
    "write_volume",
]

logger = logging.getLogger(__name__)

#: Key of our own metadata in TIFF (ImageJ ``Properties`` or shaped JSON) and zarr attributes.
METADATA_KEY = "tomoseg"
_METADATA_VERSION = 1

TIFF_SUFFIXES = (".tif", ".tiff")
#: What :func:`read_volume` accepts, for error messages and ``--help`` texts.
READ_FORMATS = (
    ".tif/.tiff (a multi-page 3D stack)",
    "a folder of .tif/.tiff slices (one 2D slice per file)",
    ".npy",
    ".zarr (an array, or a group holding one array)",
    ".h5/.hdf5 (needs h5py)",
)
#: Endings :func:`write_volume` and :func:`write_labels` can write.
WRITE_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")

# Errors tifffile (and the codecs under it) raise on damaged files; our own ValueErrors are raised
# outside the try blocks that catch these, so they are never re-wrapped.
_TIFF_ERRORS: tuple[type[Exception], ...] = (
    tifffile.TiffFileError,
    ValueError,
    struct.error,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    RuntimeError,
    zlib.error,
)

# Slabs read at once when scanning or copying a volume: bounded memory for volumes of any size.
_SLAB_ELEMENTS = 1 << 25
# Z-slices sampled by check_volume on lazy (on-disk) arrays instead of a full pass.
_SAMPLED_SLICES = 8
_ZARR_CHUNKS = (16, 512, 512)
# tifffile switches to BigTIFF above this size; ImageJ cannot read compressed BigTIFF.
_CLASSIC_TIFF_LIMIT = 2**32 - 2**25
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

_UNIT_TO_UM = {
    "um": 1.0,
    "µm": 1.0,  # micro sign
    "μm": 1.0,  # greek mu
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micrometers": 1.0,
    "micrometres": 1.0,
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "a": 1e-4,
    "å": 1e-4,
    "angstrom": 1e-4,
}


# --------------------------------------------------------------------------------------------------
# validation


def check_volume(arr: Any, *, name: str = "volume") -> None:
    """Raise a ValueError, saying what to do, if ``arr`` is not a usable grey-value volume.

    Checks, in order: 3D shape ``(z, y, x)`` (2D images, RGB/RGBA stacks and 4D+ arrays are
    refused), no empty axis, a real numeric or boolean data type, only finite values (floats) and
    not one constant value.

    In-memory arrays are scanned completely, slab by slab. On-disk arrays (``np.memmap``, zarr,
    :class:`LazySliceStack`, HDF5) are checked on a few evenly spaced z-slices only, so that
    opening a 100 GB volume stays cheap; a constant sample is confirmed by a full pass.

    Parameters
    ----------
    arr
        Anything with ``shape``, ``dtype`` and numpy-style slicing on the first axis.
    name
        What to call the volume in messages, e.g. its file name.

    Raises
    ------
    ValueError
        If the volume cannot be segmented as it is.
    """
    shape = tuple(int(s) for s in arr.shape)
    ndim = len(shape)
    if ndim == 4 and shape[-1] in (3, 4):
        kind = "RGB" if shape[-1] == 3 else "RGBA"
        raise ValueError(
            f"{name}: looks like a stack of {kind} colour images (shape {shape}); "
            "convert to greyscale first (e.g. skimage.color.rgb2gray, or Fiji: Image > Type > 8-bit)"
        )
    if ndim == 2:
        raise ValueError(
            f"{name}: expected a 3D volume (z, y, x), got a 2D image of shape {shape}; for a "
            "single slice, add an axis (image[np.newaxis]) or save it as a one-slice stack"
        )
    if ndim != 3:
        hint = (
            "drop the axes of length 1 (np.squeeze) or pick one channel / time point"
            if ndim > 3
            else "a volume needs three axes"
        )
        raise ValueError(
            f"{name}: expected a 3D volume (z, y, x), got a {ndim}D array of shape {shape}; {hint}"
        )
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape}); every axis needs at least one voxel")
    dtype = np.dtype(arr.dtype)
    if dtype.kind == "c":
        raise ValueError(
            f"{name} holds complex numbers ({dtype}); take the magnitude (np.abs) or the real "
            "part first"
        )
    if dtype.kind not in "biuf":
        raise ValueError(
            f"{name} has data type {dtype}, which is not a grey value; expected integers, floats "
            "or booleans (e.g. uint8, uint16, float32)"
        )
    lazy = isinstance(arr, np.memmap) or not isinstance(arr, np.ndarray)
    slabs = _sampled_slices(arr) if lazy else _slabs(arr)
    if dtype.kind == "f":
        _check_finite(arr, slabs, name=name, sampled=lazy)
        slabs = _sampled_slices(arr) if lazy else _slabs(arr)
    first = np.asarray(arr[0, 0, 0])
    if all(_is_constant(s, first) for s in slabs) and (
        not lazy or all(_is_constant(s, first) for s in _slabs(arr))
    ):
        raise ValueError(
            f"{name} has the same value ({first.item()!r}) everywhere: nothing to segment; check "
            "that you opened the right file (or dataset)"
        )


def _is_constant(slab: np.ndarray, value: np.ndarray) -> bool:
    return not bool(np.any(slab != value))


def _check_finite(arr: Any, slabs: Iterator[np.ndarray], *, name: str, sampled: bool) -> None:
    n_nan = n_inf = n_slices = 0
    for slab in slabs:
        n_slices += 1 if sampled else 0
        finite = np.isfinite(slab)
        if not finite.all():
            n_nan += int(np.count_nonzero(np.isnan(slab)))
            n_inf += int(np.count_nonzero(np.isinf(slab)))
    if n_nan or n_inf:
        where = (
            f"found in {n_slices} of {arr.shape[0]} z-slices checked"
            if sampled
            else f"of {int(np.prod(arr.shape))} voxels"
        )
        raise ValueError(
            f"{name} contains {n_nan} NaN and {n_inf} infinite values ({where}); replace them "
            "first, e.g. np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)"
        )


def _slab_depth(shape: Sequence[int], step: int = 1) -> int:
    """Z-slices per slab so that a slab holds about ``_SLAB_ELEMENTS`` voxels (a multiple of step)."""
    per_slice = max(1, int(np.prod(shape[1:])))
    depth = max(1, _SLAB_ELEMENTS // per_slice)
    return max(step, depth // step * step)


def _slabs(arr: Any, step: int = 1) -> Iterator[np.ndarray]:
    """The volume as consecutive z-slabs (numpy arrays), bounded in memory."""
    depth = _slab_depth(arr.shape, step)
    for z0 in range(0, int(arr.shape[0]), depth):
        yield np.asarray(arr[z0 : z0 + depth])


def _sampled_slices(arr: Any) -> Iterator[np.ndarray]:
    n = int(arr.shape[0])
    for z in np.unique(np.linspace(0, n - 1, min(n, _SAMPLED_SLICES)).round().astype(int)):
        yield np.asarray(arr[int(z)])


def _check_voxel_size(voxel_size: Sequence[float] | None) -> tuple[float, float, float] | None:
    if voxel_size is None:
        return None
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"voxel_size must be three numbers (z, y, x) in micrometres, got {voxel_size!r}"
        ) from err
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            "voxel_size must be three positive numbers (z, y, x) in micrometres, "
            f"got {voxel_size!r}"
        )
    return values[0], values[1], values[2]


# --------------------------------------------------------------------------------------------------
# lazy reading of TIFF pages and folders of slices


class LazySliceStack:
    """A read-only 3D volume whose z-slices are read from TIFF files only when indexed.

    Used for compressed multi-page TIFF stacks and for folders of TIFF slices, where a memory map
    is impossible. Supports ``stack[i]``, ``stack[a:b]``, ``stack[[i, j]]`` and tuples of
    integers/slices (``stack[:, 10:20, ::2]``), ``np.asarray(stack)``, ``shape``, ``dtype`` and
    ``ndim``. Reads are serialised by a lock, so threads may share one stack. Up to a few file
    handles stay open; :meth:`close` (or ``with``) releases them, as does garbage collection.
    The stack pickles (to dask workers, say) without its open handles.

    Parameters
    ----------
    sources
        One ``(file, page index)`` per z-slice.
    shape
        ``(z, y, x)``; ``z`` must equal ``len(sources)``.
    dtype
        Data type of every slice.
    """

    _MAX_OPEN_FILES = 4

    def __init__(
        self,
        sources: Sequence[tuple[str | os.PathLike[str], int]],
        shape: Sequence[int],
        dtype: npt.DTypeLike,
    ) -> None:
        self._sources = tuple((Path(p), int(k)) for p, k in sources)
        self.shape: tuple[int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.dtype = np.dtype(dtype)
        if len(self.shape) != 3 or self.shape[0] != len(self._sources):
            raise ValueError(
                f"shape {self.shape} does not match {len(self._sources)} slices: expected (z, y, x) "
                "with z equal to the number of sources"
            )
        self._open()

    def _open(self) -> None:
        self._lock = threading.Lock()
        self._handles: OrderedDict[Path, tifffile.TiffFile] = OrderedDict()
        self._finalizer = weakref.finalize(self, _close_handles, self._handles)

    @property
    def ndim(self) -> int:
        return 3

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        first = self._sources[0][0] if self._sources else "-"
        return f"LazySliceStack(shape={self.shape}, dtype={self.dtype}, first file={str(first)!r})"

    def close(self) -> None:
        """Close the open file handles; later reads reopen them."""
        with self._lock:
            _close_handles(self._handles)

    def __enter__(self) -> LazySliceStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"sources": self._sources, "shape": self.shape, "dtype": self.dtype.str}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._sources = state["sources"]
        self.shape = state["shape"]
        self.dtype = np.dtype(state["dtype"])
        self._open()

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype, copy=False)

    def read_slice(self, z: int) -> np.ndarray:
        """The 2D slice ``z`` (no negative indices), read from its file."""
        path, page = self._sources[z]
        with self._lock:
            tif = self._handles.get(path)
            if tif is None:
                tif = _open_tiff(path)
                self._handles[path] = tif
                while len(self._handles) > self._MAX_OPEN_FILES:
                    self._handles.popitem(last=False)[1].close()
            else:
                self._handles.move_to_end(path)
            try:
                data = tif.asarray(key=page, series=0)
            except _TIFF_ERRORS as err:
                raise ValueError(f"cannot read slice {z} (page {page}) of {path}: {err}") from err
        if data.shape != self.shape[1:]:
            if data.size != self.shape[1] * self.shape[2]:
                raise ValueError(
                    f"slice {z} of {path} has shape {data.shape}, expected {self.shape[1:]}"
                )
            data = data.reshape(self.shape[1:])
        return data

    def __getitem__(self, key: Any) -> np.ndarray:
        first, rest = self._split_key(key)
        n = self.shape[0]
        if isinstance(first, (int, np.integer)):
            z = int(first)
            if not -n <= z < n:
                raise IndexError(f"index {z} is out of bounds for axis 0 with size {n}")
            return self.read_slice(z % n)[rest]
        if isinstance(first, slice):
            indices = np.arange(n)[first]
        else:
            sel = np.asarray(first)
            if sel.dtype == bool:
                if sel.shape != (n,):
                    raise IndexError(
                        f"boolean index of shape {sel.shape} does not match axis 0 of size {n}"
                    )
                indices = np.flatnonzero(sel)
            elif sel.ndim == 1 and sel.dtype.kind in "iu":
                if sel.size and not (-n <= sel.min() and sel.max() < n):
                    raise IndexError(f"an index is out of bounds for axis 0 with size {n}")
                indices = sel % n
            else:
                raise IndexError(
                    "LazySliceStack supports integers, slices and 1D integer/boolean arrays on the "
                    f"first axis, got {first!r}"
                )
        per_slice = np.broadcast_to(np.zeros((), self.dtype), self.shape[1:])[rest].shape
        out = np.empty((len(indices), *per_slice), dtype=self.dtype)
        for j, z in enumerate(indices):
            out[j] = self.read_slice(int(z))[rest]
        return out

    @staticmethod
    def _split_key(key: Any) -> tuple[Any, tuple[Any, ...]]:
        parts = key if isinstance(key, tuple) else (key,)
        n_ellipsis = sum(1 for k in parts if k is Ellipsis)
        if n_ellipsis > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_ellipsis:
            i = next(i for i, k in enumerate(parts) if k is Ellipsis)
            parts = (*parts[:i], *(slice(None),) * (4 - len(parts)), *parts[i + 1 :])
        if len(parts) > 3:
            raise IndexError(f"too many indices for a 3D volume: {len(parts)}")
        parts = (*parts, *(slice(None),) * (3 - len(parts)))
        for k in parts[1:]:
            if not isinstance(k, (int, np.integer, slice)):
                raise IndexError(
                    f"LazySliceStack supports integers and slices on the y and x axes, got {k!r}"
                )
        return parts[0], tuple(parts[1:])


def _close_handles(handles: OrderedDict[Path, tifffile.TiffFile]) -> None:
    while handles:
        handles.popitem()[1].close()


#: What :func:`read_volume` returns: in memory (``lazy=False``) always a numpy array.
VolumeLike: TypeAlias = "np.ndarray | zarr.Array | LazySliceStack"


# --------------------------------------------------------------------------------------------------
# readers


def _open_tiff(path: Path) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except _TIFF_ERRORS as err:
        raise ValueError(
            f"cannot read TIFF file {path}: it is damaged or not a TIFF ({err})"
        ) from err


def _tiff_own_metadata(tif: tifffile.TiffFile, path: Path) -> dict[str, Any] | None:
    """Our metadata block, from ImageJ ``Properties`` or tifffile's shaped JSON description."""
    raw: Any = None
    ij = tif.imagej_metadata
    if ij:
        raw = (ij.get("Properties") or {}).get(METADATA_KEY)
    if raw is None and tif.is_shaped:
        for meta in tif.shaped_metadata or ():
            if METADATA_KEY in meta:
                raw = meta[METADATA_KEY]
                break
    if raw is None:
        return None
    try:
        meta = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the napari-tomoseg metadata is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the napari-tomoseg metadata is malformed (not a JSON object)")
    return meta


def _tiff_volume_shape(tif: tifffile.TiffFile, path: Path) -> tuple[int, ...]:
    """The series shape; a one-slice volume we wrote keeps its z axis (tifffile squeezes it)."""
    series = tif.series[0]
    if "S" in series.axes:
        raise ValueError(
            f"{path}: holds RGB/RGBA colour images (shape {series.shape}, axes {series.axes!r}); "
            "convert to greyscale first (e.g. skimage.color.rgb2gray, or Fiji: Image > Type > 8-bit)"
        )
    shape = tuple(int(s) for s in series.shape)
    own = _tiff_own_metadata(tif, path)
    if own is not None and "shape" in own:
        stored = tuple(int(s) for s in own["shape"])
        if int(np.prod(stored)) == int(np.prod(shape)):
            return stored
    return shape


def _read_tiff(path: Path, dataset: str | None, lazy: bool) -> Any:
    _no_dataset(path, dataset)
    with _open_tiff(path) as tif:
        shape = _tiff_volume_shape(tif, path)
        series = tif.series[0]
        n_pages = len(series.pages)
        contiguous = series.dataoffset is not None
        if not lazy:
            try:
                data = tif.asarray(series=0)
            except _TIFF_ERRORS as err:
                raise ValueError(f"cannot read TIFF file {path}: {err}") from err
            return data.reshape(shape)
        dtype = series.dtype
    if contiguous:
        try:
            return tifffile.memmap(path, series=0, mode="r").reshape(shape)
        except _TIFF_ERRORS as err:
            logger.debug("%s cannot be memory-mapped (%s); reading it page by page", path, err)
    if len(shape) == 3 and n_pages == shape[0]:
        return LazySliceStack([(path, i) for i in range(n_pages)], shape, dtype)
    # Pages that are not z-slices (2D images, volumetric tiles): nothing to stream slice-wise.
    logger.info("%s: pages do not map to z-slices; reading it into memory", path)
    return _read_tiff(path, None, False)


def _natural_key(name: str) -> list[Any]:
    """Sort key putting 'slice2' before 'slice10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _read_tiff_folder(path: Path, dataset: str | None, lazy: bool) -> Any:
    _no_dataset(path, dataset)
    files = sorted(
        (
            f
            for f in path.iterdir()
            if f.suffix.lower() in TIFF_SUFFIXES and not f.name.startswith(".") and f.is_file()
        ),
        key=lambda f: _natural_key(f.name),
    )
    if not files:
        raise ValueError(
            f"folder {path} holds no .tif/.tiff slices; supported inputs are: "
            + "; ".join(READ_FORMATS)
        )
    first_shape: tuple[int, ...] = ()
    first_dtype = np.dtype(np.uint8)
    for i, f in enumerate(files):
        with _open_tiff(f) as tif:
            series = tif.series[0]
            shape, dtype = tuple(int(s) for s in series.shape), np.dtype(series.dtype)
            if "S" in series.axes:
                raise ValueError(
                    f"{f}: slice holds RGB/RGBA colour (shape {shape}); convert the slices to "
                    "greyscale first (e.g. Fiji: Image > Type > 8-bit)"
                )
        if len(shape) != 2:
            raise ValueError(
                f"{f}: each file in a folder of slices must hold one 2D slice, this one has shape "
                f"{shape}; open a multi-page stack as a file, not as a folder"
            )
        if i == 0:
            first_shape, first_dtype = shape, dtype
        elif shape != first_shape or dtype != first_dtype:
            raise ValueError(
                f"{f.name} in {path} has shape {shape} and dtype {dtype}, but the first slice "
                f"{files[0].name} has shape {first_shape} and dtype {first_dtype}; all slices "
                "must match"
            )
    stack = LazySliceStack([(f, 0) for f in files], (len(files), *first_shape), first_dtype)
    if lazy:
        return stack
    with stack:
        return stack[:]


def _read_npy(path: Path, dataset: str | None, lazy: bool) -> Any:
    _no_dataset(path, dataset)
    try:
        data = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    except ValueError as err:
        if "Object arrays" in str(err):
            raise ValueError(
                f"{path} holds Python objects, which are never unpickled (unsafe); save the volume "
                "as a numeric array"
            ) from err
        raise ValueError(f"cannot read {path}: it is damaged or not a .npy file ({err})") from err
    except EOFError as err:
        raise ValueError(f"cannot read {path}: it is damaged or truncated ({err})") from err
    if not isinstance(data, np.ndarray):  # an .npz archive behind a .npy ending
        data.close()
        raise ValueError(
            f"{path} is an .npz archive, not a .npy array; rename it or save one array"
        )
    return data


def _is_zarr_folder(path: Path) -> bool:
    return any((path / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup"))


def _open_zarr(path: Path) -> Any:
    try:
        return zarr.open(store=str(path), mode="r")
    except FileNotFoundError as err:  # includes zarr's NodeNotFoundError
        raise ValueError(
            f"{path} is not a zarr store (no zarr.json, .zarray or .zgroup found): {err}"
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read zarr store {path}: {err}") from err


def _zarr_array(path: Path, dataset: str | None) -> Any:
    return _array_in(_open_zarr(path), path, dataset)


def _array_in(node: Any, path: Path, dataset: str | None) -> Any:
    """The array ``dataset`` of the opened zarr ``node`` (the node itself, or its only array, or an
    OME-Zarr group's full resolution when ``dataset`` is None)."""
    if isinstance(node, zarr.Array):
        if dataset:
            raise ValueError(
                f"{path} is a single zarr array with no dataset {dataset!r} inside; leave "
                "dataset (--dataset) out"
            )
        return node
    if dataset:
        try:
            member = node[dataset]
        except KeyError:
            member = None
        if not isinstance(member, zarr.Array):
            raise ValueError(f"{path} has no array {dataset!r}; it holds: {_describe_arrays(node)}")
        return member
    full = _ome_full_resolution(node)
    if full is not None:  # an OME-Zarr multiscale group: its first level is the volume
        return node[full]
    arrays = [(k, a) for k, a in node.members(max_depth=None) if isinstance(a, zarr.Array)]
    if not arrays:
        raise ValueError(f"zarr group {path} holds no arrays")
    if len(arrays) > 1:
        raise ValueError(
            f"zarr group {path} holds {len(arrays)} arrays: {_describe_arrays(node)}; choose one "
            "with dataset='name' (--dataset name); in a multiscale (OME-Zarr) group '0' is "
            "usually the full resolution"
        )
    return arrays[0][1]


def _multiscales(group: Any) -> list[dict[str, Any]]:
    """The ``multiscales`` entries of an OME-Zarr group (NGFF 0.4 keeps them at the top of the
    attributes, 0.5 under ``ome``); [] for anything else."""
    attrs = group.attrs.asdict()
    found = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales") or []
    return [ms for ms in found if isinstance(ms, dict)]


def _ome_full_resolution(group: Any) -> str | None:
    """The path of the full-resolution array of an OME-Zarr (NGFF 0.4 / 0.5) multiscale group."""
    for ms in _multiscales(group):
        datasets = ms.get("datasets") or []
        if datasets and isinstance(datasets[0], dict):
            member = group.get(str(datasets[0].get("path", "")))
            if isinstance(member, zarr.Array):
                return str(datasets[0]["path"])
    return None


def _describe_arrays(group: Any) -> str:
    # zarr lists members in no fixed order (async listing): sort for stable messages.
    items = [
        f"{k!r} {tuple(a.shape)} {a.dtype}"
        for k, a in sorted(group.members(max_depth=None), key=lambda m: _natural_key(m[0]))
        if isinstance(a, zarr.Array)
    ]
    return ", ".join(items) or "no arrays"


def _read_zarr(path: Path, dataset: str | None, lazy: bool) -> Any:
    arr = _zarr_array(path, dataset)
    return arr if lazy else np.asarray(arr[...])


def _read_hdf5(path: Path, dataset: str | None, lazy: bool) -> Any:
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"reading HDF5 files ({path.name}) needs h5py, which is not installed: pip install h5py"
        ) from err
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(
            f"cannot read HDF5 file {path}: it is damaged or not HDF5 ({err})"
        ) from err
    try:
        found: list[tuple[str, Any]] = []
        h5.visititems(
            lambda k, obj: found.append((k, obj)) if isinstance(obj, h5py.Dataset) else None
        )
        listing = ", ".join(f"{k!r} {tuple(d.shape)} {d.dtype}" for k, d in found) or "no datasets"
        if dataset:
            ds = h5.get(dataset)
            if not isinstance(ds, h5py.Dataset):
                raise ValueError(f"{path} has no dataset {dataset!r}; it holds: {listing}")
        elif len(found) == 1:
            ds = found[0][1]
        else:
            raise ValueError(
                f"{path} holds {len(found)} datasets ({listing}); choose one with "
                "dataset='name' (--dataset name)"
            )
        if lazy:
            return ds  # keeps the file open for as long as the dataset is referenced
        data = np.asarray(ds[()])
    except BaseException:
        h5.close()
        raise
    h5.close()
    return data


def _no_dataset(path: Path, dataset: str | None) -> None:
    if dataset:
        raise ValueError(
            f"dataset={dataset!r} only applies to zarr and HDF5 files; {path} has a single "
            "volume, leave dataset (--dataset) out"
        )


_Reader = Callable[[Path, "str | None", bool], Any]

#: File ending -> reader. A folder that is not a zarr store is read as a folder of TIFF slices.
_READERS: dict[str, _Reader] = {
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".npy": _read_npy,
    ".zarr": _read_zarr,
    ".h5": _read_hdf5,
    ".hdf5": _read_hdf5,
}


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(p))
    return p


def _reader_for(p: Path) -> _Reader:
    suffix = p.suffix.lower()
    if p.is_dir():
        return _read_zarr if suffix == ".zarr" or _is_zarr_folder(p) else _read_tiff_folder
    reader = _READERS.get(suffix)
    if reader is None:
        raise ValueError(
            f"cannot read {p}: unsupported file type {suffix or '(no ending)'!r}; supported "
            "inputs are: " + "; ".join(READ_FORMATS)
        )
    return reader


@overload
def read_volume(
    path: str | os.PathLike[str], *, dataset: str | None = None, lazy: Literal[False] = False
) -> np.ndarray: ...


@overload
def read_volume(
    path: str | os.PathLike[str], *, dataset: str | None = None, lazy: bool
) -> VolumeLike: ...


def read_volume(
    path: str | os.PathLike[str], *, dataset: str | None = None, lazy: bool = False
) -> VolumeLike:
    """Read a 3D grey-value volume ``(z, y, x)`` and check that it can be segmented.

    Parameters
    ----------
    path
        A ``.tif``/``.tiff`` stack, a folder of TIFF slices (natural order: ``slice2`` before
        ``slice10``), a ``.npy`` file, a ``.zarr`` store or a ``.h5``/``.hdf5`` file.
    dataset
        Name of the array inside a zarr group or HDF5 file; needed only when it holds several.
    lazy
        If true, return an array that reads from disk when sliced instead of loading everything:
        ``np.memmap`` (uncompressed TIFF, ``.npy``), :class:`LazySliceStack` (compressed TIFF,
        folders of slices), ``zarr.Array`` or ``h5py.Dataset``. All have ``shape``, ``dtype``,
        ``ndim`` and numpy slicing (``vol[z]``, ``vol[z0:z1, y0:y1, x0:x1]``) returning numpy arrays.

    Returns
    -------
    numpy.ndarray or VolumeLike
        The volume as stored on disk (no dtype conversion); a numpy array unless ``lazy``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the format is unsupported, the file is damaged, ``dataset`` is missing or unknown, or the
        data fail :func:`check_volume`.
    ImportError
        For HDF5 files when h5py is not installed.
    """
    p = _existing(path)
    arr = _reader_for(p)(p, dataset, lazy)
    check_volume(arr, name=str(p) if not dataset else f"{p}[{dataset}]")
    return arr


def read_labels(path: str | os.PathLike[str], *, dataset: str | None = None) -> np.ndarray:
    """Read a 3D label volume (phase ids; 0 = none). Unlike :func:`read_volume`, a label volume may
    hold a single phase everywhere.

    Raises
    ------
    ValueError
        If the file is not a 3D array of integer ids.
    """
    p = _existing(path)
    arr = np.asarray(_reader_for(p)(p, dataset, False))
    if arr.ndim != 3:
        raise ValueError(f"{p}: expected 3D labels (z, y, x), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(
            f"{p}: labels must be integer phase ids, got dtype {arr.dtype}; take the argmax first"
        )
    return arr


# --------------------------------------------------------------------------------------------------
# metadata


def _unit_factor(unit: Any) -> float | None:
    """Micrometres per ``unit``; None for pixels or unknown units."""
    if not isinstance(unit, str):
        return None
    key = unit.strip().lower().replace("\\u00b5", "µ")
    return _UNIT_TO_UM.get(key)


def _own_voxel_size(meta: dict[str, Any] | None) -> tuple[float, float, float] | None:
    if not meta or meta.get("voxel_size_um") is None:
        return None
    try:
        return _check_voxel_size(meta["voxel_size_um"])
    except ValueError:
        logger.warning("ignoring malformed voxel size %r in file metadata", meta["voxel_size_um"])
        return None


def _tiff_voxel_size(path: Path) -> tuple[float, float, float] | None:
    with _open_tiff(path) as tif:
        own = _own_voxel_size(_tiff_own_metadata(tif, path))
        if own is not None:
            return own
        ij = tif.imagej_metadata
        if not ij:
            # Plain TIFF resolution tags give (y, x) at best, never z: not a voxel size.
            return None
        factor = _unit_factor(ij.get("unit"))
        spacing = ij.get("spacing")
        xres, yres = tif.pages.first.resolution
    if factor is None or not isinstance(spacing, (int, float)) or not xres or not yres:
        return None
    return _check_voxel_size((spacing * factor, factor / yres, factor / xres))


def _zarr_voxel_size(path: Path, dataset: str | None) -> tuple[float, float, float] | None:
    group = _open_zarr(path)
    own = _own_voxel_size(_array_in(group, path, dataset).attrs.get(METADATA_KEY))
    if own is not None or isinstance(group, zarr.Array):
        return own
    dataset = dataset if dataset is not None else _ome_full_resolution(group)
    # OME-Zarr (NGFF 0.4 / 0.5): the scale of `dataset` in the group's multiscales.
    for ms in _multiscales(group):
        axes = [a.get("name") if isinstance(a, dict) else a for a in ms.get("axes", [])]
        units = [a.get("unit") if isinstance(a, dict) else None for a in ms.get("axes", [])]
        for ds in ms.get("datasets", []):
            if ds.get("path") != dataset:
                continue
            scale = next(
                (
                    t["scale"]
                    for t in ds.get("coordinateTransformations", [])
                    if t.get("type") == "scale"
                ),
                None,
            )
            if scale is None or not {"z", "y", "x"} <= set(axes):
                return None
            sizes = []
            for ax in ("z", "y", "x"):
                i = axes.index(ax)
                factor = _unit_factor(units[i]) if units[i] else None
                if factor is None:
                    return None
                sizes.append(float(scale[i]) * factor)
            return _check_voxel_size(sizes)
    return None


def read_voxel_size(
    path: str | os.PathLike[str], *, dataset: str | None = None
) -> tuple[float, float, float] | None:
    """The voxel size ``(z, y, x)`` in micrometres stored with a volume, or None if unknown.

    Sources, in order: napari-tomoseg's own metadata (TIFF and zarr files it wrote); ImageJ
    ``spacing``/``unit`` plus the resolution tags (TIFF); OME-Zarr scales (zarr, with ``dataset``).
    Plain TIFF resolution tags alone give no z spacing and are ignored. ``.npy`` and folders of
    slices carry no voxel size.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the format is unsupported or the file is damaged.
    """
    p = _existing(path)
    reader = _reader_for(p)
    if reader is _read_tiff:
        return _tiff_voxel_size(p)
    if reader is _read_zarr:
        return _zarr_voxel_size(p, dataset)
    return None


def read_label_phases(
    path: str | os.PathLike[str], *, dataset: str | None = None
) -> PhaseTable | None:
    """The phase table stored in a label file by :func:`write_labels`, or None if there is none.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the format is unsupported, the file is damaged or its phase table is malformed.
    """
    p = _existing(path)
    reader = _reader_for(p)
    meta: dict[str, Any] | None = None
    if reader is _read_tiff:
        with _open_tiff(p) as tif:
            meta = _tiff_own_metadata(tif, p)
    elif reader is _read_zarr:
        raw = _zarr_array(p, dataset).attrs.get(METADATA_KEY)
        meta = raw if isinstance(raw, dict) else None
    if not meta or not meta.get("phases"):
        return None
    try:
        return PhaseTable.from_json(meta["phases"])
    except ValueError as err:
        raise ValueError(f"{p}: the stored phase table is malformed ({err})") from err


# --------------------------------------------------------------------------------------------------
# writing


def _write_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(
            f"cannot write {path}: unsupported file type {suffix or '(no ending)'!r}; supported "
            f"endings are {', '.join(WRITE_SUFFIXES)}"
        )
    return suffix


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Check that ``path`` can be written, before any expensive work is done.

    Parameters
    ----------
    path
        Output file; its ending (``.tif``, ``.tiff``, ``.npy``, ``.zarr``) picks the format.
    overwrite
        Allow replacing an existing output. A folder is only ever replaced by a ``.zarr`` output
        and only if it is itself a zarr store.

    Returns
    -------
    pathlib.Path
        ``path`` with ``~`` expanded.

    Raises
    ------
    ValueError
        If the ending is not supported.
    FileNotFoundError
        If the parent folder does not exist (it is never created silently).
    FileExistsError
        If the output exists and ``overwrite`` is false, or it is a folder that must not be replaced.
    PermissionError
        If the parent folder is not writable.
    """
    p = Path(path).expanduser()
    suffix = _write_kind(p)
    parent = p.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise FileNotFoundError(
            errno.ENOENT,
            f"output folder {what}; create it first (mkdir -p) or choose another output path",
            str(parent),
        )
    if p.exists() or p.is_symlink():
        if not overwrite:
            raise FileExistsError(
                errno.EEXIST,
                "output exists; pass --overwrite (overwrite=True) to replace it",
                str(p),
            )
        if p.is_dir() and not p.is_symlink() and (suffix != ".zarr" or not _is_zarr_folder(p)):
            raise FileExistsError(
                errno.EEXIST,
                "output is a folder that is not a zarr store; refusing to replace it, choose "
                "another output path",
                str(p),
            )
    if not os.access(parent, os.W_OK):
        raise PermissionError(errno.EACCES, "cannot write to the output folder", str(parent))
    return p


def _temp_name(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.{tag}{path.suffix}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _atomic_output(path: Path, *, overwrite: bool, folder: bool) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; move it onto ``path`` only on success."""
    tmp = _temp_name(path, "partial")
    if folder:
        os.mkdir(tmp)
    else:
        # O_EXCL: never clobber anything; mode 0o666 so the umask applies as for any new file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _commit(tmp, path, overwrite=overwrite)
    except BaseException:
        _remove(tmp)
        raise


def _commit(tmp: Path, path: Path, *, overwrite: bool) -> None:
    exists = path.exists() or path.is_symlink()
    if exists and not overwrite:  # appeared while we were writing
        raise FileExistsError(
            errno.EEXIST,
            "output exists; pass --overwrite (overwrite=True) to replace it",
            str(path),
        )
    if not exists or not (tmp.is_dir() or (path.is_dir() and not path.is_symlink())):
        os.replace(tmp, path)
        return
    # A folder cannot be renamed onto an existing one: swap via a backup that is restored on error.
    backup = _temp_name(path, "replaced")
    os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(backup, path)
        raise
    try:
        _remove_strict(backup)
    except OSError as err:
        logger.warning("wrote %s but could not delete the old copy %s: %s", path, backup, err)


def _remove_strict(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _metadata(
    kind: str,
    shape: tuple[int, ...],
    voxel_size: tuple[float, float, float] | None,
    phases: PhaseTable | None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "format": "napari-tomoseg",
        "version": _METADATA_VERSION,
        "kind": kind,
        "shape": list(shape),
    }
    if voxel_size is not None:
        meta["voxel_size_um"] = list(voxel_size)
    if phases is not None:
        meta["phases"] = phases.to_json()
    return meta


def _phase_lut(phases: PhaseTable) -> np.ndarray:
    """ImageJ lookup table (3, 256): each phase id in its colour, 0 black."""
    lut = np.zeros((3, 256), dtype=np.uint8)
    for p in phases.phases:
        lut[:, p.id] = [int(p.colour[i : i + 2], 16) for i in (1, 3, 5)]
    return lut


_Convert = Callable[[np.ndarray], np.ndarray]


def _converted_slabs(volume: Any, convert: _Convert, step: int = 1) -> Iterator[np.ndarray]:
    for slab in _slabs(volume, step):
        yield convert(slab)


def _write_tiff(
    tmp: Path,
    volume: Any,
    dtype: np.dtype[Any],
    convert: _Convert,
    meta: dict[str, Any],
    *,
    compress: bool,
    phases: PhaseTable | None,
) -> None:
    shape = tuple(int(s) for s in volume.shape)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    # ImageJ hyperstacks open with their calibration in Fiji; ImageJ knows only these dtypes and no
    # compressed BigTIFF, so anything else is written as tifffile's shaped (Big)TIFF.
    imagej = dtype in _IMAGEJ_DTYPES and (not compress or nbytes <= _CLASSIC_TIFF_LIMIT)
    bigtiff = not imagej and nbytes > _CLASSIC_TIFF_LIMIT
    voxel = meta.get("voxel_size_um")
    kwargs: dict[str, Any] = {}
    if imagej:
        ij: dict[str, Any] = {"axes": "ZYX", "Properties": {METADATA_KEY: json.dumps(meta)}}
        if voxel is not None:
            ij.update(spacing=voxel[0], unit="um")
            kwargs["resolution"] = (1.0 / voxel[2], 1.0 / voxel[1])
        if phases is not None:
            ij.update(LUTs=[_phase_lut(phases)], min=0.0, max=255.0)
        kwargs["metadata"] = ij
    else:
        kwargs["metadata"] = {"axes": "ZYX", METADATA_KEY: meta}
        if voxel is not None:
            kwargs["resolution"] = (1e4 / voxel[2], 1e4 / voxel[1])
            kwargs["resolutionunit"] = "CENTIMETER"

    def pages() -> Iterator[np.ndarray]:
        for slab in _converted_slabs(volume, convert):
            yield from slab

    with open(tmp, "wb") as fh:
        tifffile.imwrite(
            fh,
            pages(),
            shape=shape,
            dtype=dtype,
            photometric="minisblack",
            compression="zlib" if compress else None,
            imagej=imagej,
            bigtiff=bigtiff,
            **kwargs,
        )
        fh.flush()
        os.fsync(fh.fileno())


def _write_npy(tmp: Path, volume: Any, dtype: np.dtype[Any], convert: _Convert) -> None:
    # Streamed slab by slab (no np.save of a whole copy); plain writes, not a memory map, so that a
    # full disk raises OSError instead of crashing the process with SIGBUS.
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(int(s) for s in volume.shape),
    }
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for slab in _converted_slabs(volume, convert):
            fh.write(np.ascontiguousarray(slab, dtype=dtype).tobytes())
        fh.flush()
        os.fsync(fh.fileno())


def _write_zarr(
    tmp: Path, volume: Any, dtype: np.dtype[Any], convert: _Convert, meta: dict[str, Any]
) -> None:
    shape = tuple(int(s) for s in volume.shape)
    chunks = tuple(min(c, s) for c, s in zip(_ZARR_CHUNKS, shape, strict=True))
    arr = zarr.create_array(
        store=str(tmp),
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        attributes={METADATA_KEY: meta},
        dimension_names=("z", "y", "x"),
    )
    z0 = 0
    for slab in _converted_slabs(volume, convert, step=chunks[0]):
        arr[z0 : z0 + slab.shape[0]] = slab
        z0 += slab.shape[0]


def _write(
    path: Path,
    volume: Any,
    *,
    dtype: np.dtype[Any],
    convert: _Convert,
    meta: dict[str, Any],
    overwrite: bool,
    compress: bool,
    phases: PhaseTable | None,
) -> Path:
    suffix = path.suffix.lower()
    with _atomic_output(path, overwrite=overwrite, folder=suffix == ".zarr") as tmp:
        if suffix in TIFF_SUFFIXES:
            _write_tiff(tmp, volume, dtype, convert, meta, compress=compress, phases=phases)
        elif suffix == ".npy":
            logger.info("%s: .npy files store no voxel size or phase table", path)
            _write_npy(tmp, volume, dtype, convert)
        else:
            _write_zarr(tmp, volume, dtype, convert, meta)
    return path


def _check_writable_shape(volume: Any, name: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) != 3:
        raise ValueError(f"{name} must be 3D (z, y, x), got shape {shape}")
    if 0 in shape:
        raise ValueError(f"{name} is empty (shape {shape}); nothing to write")
    return shape[0], shape[1], shape[2]


def write_volume(
    path: str | os.PathLike[str],
    volume: Any,
    *,
    overwrite: bool = False,
    voxel_size: Sequence[float] | None = None,
    compress: bool = False,
) -> Path:
    """Write a grey-value volume ``(z, y, x)`` atomically, in the format given by the ending.

    TIFF outputs are ImageJ hyperstacks for uint8/uint16/float32 (Fiji opens them calibrated) and
    tifffile's shaped TIFF otherwise; uncompressed by default so that they can be memory-mapped by
    ``read_volume(..., lazy=True)``. Boolean volumes are written as uint8.

    Parameters
    ----------
    path
        Output ``.tif``, ``.tiff``, ``.npy`` or ``.zarr``; its folder must exist.
    volume
        A numpy array or any lazily sliceable array (written slab by slab).
    overwrite
        Replace an existing output.
    voxel_size
        ``(z, y, x)`` in micrometres, stored in TIFF and zarr metadata.
    compress
        zlib-compress TIFF pages (zarr chunks are always compressed).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ValueError, FileNotFoundError, FileExistsError
        See :func:`check_output_path`; ValueError also for a volume that is not 3D, is empty or
        has a non-numeric/complex dtype.
    OSError
        If writing fails (e.g. disk full); no partial output remains and an existing file is intact.
    """
    p = check_output_path(path, overwrite=overwrite)
    shape = _check_writable_shape(volume, "volume")
    dtype = np.dtype(volume.dtype)
    if dtype.kind not in "biuf":
        raise ValueError(
            f"cannot write a volume of dtype {dtype}; expected integers, floats or booleans"
        )
    out_dtype = np.dtype(np.uint8) if dtype.kind == "b" else dtype.newbyteorder("=")
    voxel = _check_voxel_size(voxel_size)
    return _write(
        p,
        volume,
        dtype=out_dtype,
        convert=lambda slab: slab.astype(out_dtype, copy=False),
        meta=_metadata("volume", shape, voxel, None),
        overwrite=overwrite,
        compress=compress,
        phases=None,
    )


def write_labels(
    path: str | os.PathLike[str],
    labels: Any,
    *,
    phases: PhaseTable | None = None,
    voxel_size: Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a phase-label volume as uint8, with its phase table, atomically.

    TIFF outputs are zlib-compressed ImageJ hyperstacks (tifffile's shaped BigTIFF above 4 GB). The
    phase table and voxel size are stored as JSON (ImageJ ``Properties`` entry ``tomoseg``, or the
    shaped JSON description) and read back by :func:`read_label_phases` / :func:`read_voxel_size`;
    the phase colours also become an ImageJ lookup table. zarr outputs keep the same JSON in
    ``attrs["tomoseg"]``; ``.npy`` stores the labels only.

    Parameters
    ----------
    path
        Output ``.tif``, ``.tiff``, ``.npy`` or ``.zarr``; its folder must exist.
    labels
        Integer or boolean ``(z, y, x)`` array of phase ids: 0 = not annotated / outside, 1..C the
        phases. Values must fit uint8 and, with ``phases``, be at most C.
    phases
        The phase table to store with the labels.
    voxel_size
        ``(z, y, x)`` in micrometres.
    overwrite
        Replace an existing output.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    ValueError
        For an unsupported ending, labels that are not 3D integer phase ids, or ids outside 0..C.
    FileNotFoundError, FileExistsError
        See :func:`check_output_path`.
    OSError
        If writing fails (e.g. disk full); no partial output remains and an existing file is intact.
    """
    p = check_output_path(path, overwrite=overwrite)
    shape = _check_writable_shape(labels, "labels")
    dtype = np.dtype(labels.dtype)
    if dtype.kind not in "biu":
        hint = " (probabilities? take the argmax over phases first)" if dtype.kind == "f" else ""
        raise ValueError(
            f"labels must hold integer phase ids (0 = none, 1..C), got dtype {dtype}{hint}"
        )
    voxel = _check_voxel_size(voxel_size)
    top = len(phases) if phases is not None else 255

    def to_uint8(slab: np.ndarray) -> np.ndarray:
        # Checked per slab while writing: one pass over the data; a failure removes the partial file.
        if slab.dtype != np.uint8 or top < 255:
            lo, hi = (int(slab.min()), int(slab.max())) if slab.size else (0, 0)
            if lo < 0 or hi > top:
                bad = lo if lo < 0 else hi
                table = f"the phase table has {top} phases" if phases is not None else "uint8"
                raise ValueError(
                    f"labels contain id {bad}, outside 0..{top} ({table}); 0 means not "
                    "annotated and 1..C the phases"
                )
        return slab.astype(np.uint8, copy=False)

    return _write(
        p,
        labels,
        dtype=np.dtype(np.uint8),
        convert=to_uint8,
        meta=_metadata("labels", shape, voxel, phases),
        overwrite=overwrite,
        compress=True,
        phases=phases,
    )


# --------------------------------------------------------------------------------------------------
# streaming: outputs written block by block, lazy dask views, chunk checks

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
    voxel = _check_voxel_size(voxel_size)
    meta = _metadata(kind, shp, voxel, phases if kind == "labels" else None)

    def create(store: Path) -> Any:
        return _uint8_store(store, shp, chunks or _ZARR_CHUNKS, meta)

    if p.suffix.lower() == ".zarr":
        with _atomic_output(p, overwrite=overwrite, folder=True) as tmp:
            yield create(tmp)
        return
    scratch = _temp_name(p.with_suffix(".zarr"), "scratch")
    os.mkdir(scratch)
    try:
        arr = create(scratch)
        yield arr
        if kind == "labels":
            write_labels(p, arr, phases=phases, voxel_size=voxel, overwrite=overwrite)
        else:
            write_volume(p, arr, voxel_size=voxel, overwrite=overwrite, compress=True)
    finally:
        _remove(scratch)


def _uint8_store(
    store: Path, shape: tuple[int, ...], chunks: Sequence[int], meta: dict[str, Any]
) -> Any:
    """A new uint8 zarr v3 array of zeros (nothing stored until written) with our metadata."""
    return zarr.create_array(
        store=str(store),
        shape=shape,
        dtype=np.uint8,
        chunks=tuple(min(int(c), s) for c, s in zip(chunks, shape, strict=True)),
        fill_value=0,
        attributes={METADATA_KEY: meta},
        dimension_names=("z", "y", "x"),
    )


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
        "x".join(map(str, _ZARR_CHUNKS)),
    )
    tmp = Path(folder) / f".{secrets.token_hex(4)}.rechunk.zarr"
    try:
        shape = tuple(int(s) for s in arr.shape)
        copy = zarr.create_array(
            store=str(tmp),
            shape=shape,
            dtype=arr.dtype,
            chunks=tuple(min(c, s) for c, s in zip(_ZARR_CHUNKS, shape, strict=True)),
        )
        depth = copy.chunks[0]
        for z0 in range(0, shape[0], depth):
            copy[z0 : z0 + depth] = np.asarray(arr[z0 : z0 + depth])
        yield copy
    finally:
        _remove(tmp)


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

    p = _existing(path)
    reader = _reader_for(p)
    levels: list[Any] = []
    if reader is _read_zarr and dataset is None:
        levels = _ome_levels(p)
    if not levels:
        levels = [reader(p, dataset, True)]
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
    node = _open_zarr(path)
    if isinstance(node, zarr.Array):
        return []
    for ms in _multiscales(node):
        arrays = []
        for ds in ms.get("datasets", []):
            member = node.get(ds.get("path", ""))
            if isinstance(member, zarr.Array) and member.ndim == 3:
                arrays.append(member)
        if arrays:
            return arrays
    return []


def open_volume(path: str | os.PathLike[str], *, dataset: str | None = None) -> Any:
    """The lazy array :func:`read_volume` returns with ``lazy=True``, without the data checks.

    For workers re-opening a volume that was already checked (dask tasks): cheap, no slice sampled.
    """
    p = _existing(path)
    return _reader_for(p)(p, dataset, True)
