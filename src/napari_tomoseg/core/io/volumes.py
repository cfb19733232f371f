"""Read grey volumes and label volumes by file ending, and check that a volume can be segmented.

path -> :func:`~.formats.input_format` (by ending) -> the reader registered for it (``_READERS``)
-> numpy array, or with ``lazy=True`` an array read on slicing (``np.memmap``, :class:`LazySliceStack`,
``zarr.Array``, ``h5py.Dataset``) -> :func:`check_volume` -> :func:`read_volume`

:func:`read_labels` reads phase ids without the grey-value checks; :func:`open_volume` re-opens an
already checked volume cheaply (dask workers).
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeAlias, overload

import numpy as np
import numpy.typing as npt
import tifffile
import zarr

from napari_tomoseg.core.checks import (
    NonFiniteError,
    check_fits_memory,
    first_nonfinite,
    format_bytes,
    shape_bytes,
)
from napari_tomoseg.core.io.formats import (
    READ_FORMATS,
    TIFF_ERRORS,
    TIFF_SUFFIXES,
    InputFormat,
    existing_path,
    input_format,
    natural_key,
    open_tiff,
    quiet_tifffile,
    zarr_array,
)
from napari_tomoseg.core.io.metadata import tiff_metadata

__all__ = [
    "LazySliceStack",
    "VolumeLike",
    "check_readable",
    "check_volume",
    "iter_slabs",
    "open_volume",
    "read_labels",
    "read_volume",
]

logger = logging.getLogger(__name__)

# Slabs read at once when scanning or copying a volume: bounded memory for volumes of any size.
_SLAB_ELEMENTS = 1 << 25
# Z-slices sampled by check_volume on lazy (on-disk) arrays instead of a full pass.
_SAMPLED_SLICES = 8


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
    slabs = _sampled_slices(arr) if lazy else iter_slabs(arr)
    if dtype.kind == "f":
        _check_finite(arr, slabs, name=name, sampled=lazy)
        slabs = _sampled_slices(arr) if lazy else iter_slabs(arr)
    first = np.asarray(arr[0, 0, 0])
    if all(_is_constant(s, first) for s in slabs) and (
        not lazy or all(_is_constant(s, first) for s in iter_slabs(arr))
    ):
        raise ValueError(
            f"{name} has the same value ({first.item()!r}) everywhere: nothing to segment; check "
            "that you opened the right file (or dataset)"
        )


def _is_constant(slab: np.ndarray, value: np.ndarray) -> bool:
    return not bool(np.any(slab != value))


def _check_finite(arr: Any, slabs: Iterator[np.ndarray], *, name: str, sampled: bool) -> None:
    if sampled:
        n = int(arr.shape[0])
        zs = np.unique(np.linspace(0, n - 1, min(n, _SAMPLED_SLICES)).round().astype(int))
        bad: list[int] = []
        n_nan = n_inf = 0
        for z, plane in zip(zs, slabs, strict=False):
            if first_nonfinite(plane[None]) is not None:
                bad.append(int(z))
                n_nan += int(np.count_nonzero(np.isnan(plane)))
                n_inf += int(np.count_nonzero(np.isinf(plane)))
        if bad:
            counts = (
                f"{n_nan} NaN and {n_inf} infinite values found in {len(bad)} of the {len(zs)} "
                f"z-slices checked (of {n})"
            )
            raise NonFiniteError(name, bad[0], counts=counts)
        return
    z0 = 0
    first: int | None = None
    n_nan = n_inf = 0
    for slab in slabs:
        j = first_nonfinite(slab)
        if j is not None:
            first = z0 + j if first is None else first
            n_nan += int(np.count_nonzero(np.isnan(slab)))
            n_inf += int(np.count_nonzero(np.isinf(slab)))
        z0 += slab.shape[0]
    if first is not None:
        counts = f"{n_nan} NaN and {n_inf} infinite values of {int(np.prod(arr.shape))} voxels"
        raise NonFiniteError(name, first, counts=counts)


def _slab_depth(shape: Sequence[int], step: int = 1) -> int:
    """Z-slices per slab so that a slab holds about ``_SLAB_ELEMENTS`` voxels (a multiple of step)."""
    per_slice = max(1, int(np.prod(shape[1:])))
    depth = max(1, _SLAB_ELEMENTS // per_slice)
    return max(step, depth // step * step)


def iter_slabs(arr: Any, step: int = 1) -> Iterator[np.ndarray]:
    """The volume as consecutive z-slabs (numpy arrays) of about 32 M voxels each, bounded in memory.

    Parameters
    ----------
    arr
        Anything with ``shape`` and numpy-style slicing on the first axis.
    step
        The slab depth is a multiple of this (e.g. a zarr chunk depth, so each chunk is written once).
    """
    depth = _slab_depth(arr.shape, step)
    for z0 in range(0, int(arr.shape[0]), depth):
        yield np.asarray(arr[z0 : z0 + depth])


def _sampled_slices(arr: Any) -> Iterator[np.ndarray]:
    n = int(arr.shape[0])
    for z in np.unique(np.linspace(0, n - 1, min(n, _SAMPLED_SLICES)).round().astype(int)):
        yield np.asarray(arr[int(z)])


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
                tif = open_tiff(path)
                self._handles[path] = tif
                while len(self._handles) > self._MAX_OPEN_FILES:
                    self._handles.popitem(last=False)[1].close()
            else:
                self._handles.move_to_end(path)
            try:
                with quiet_tifffile():
                    data = tif.asarray(key=page, series=0)
            except TIFF_ERRORS as err:
                raise ValueError(
                    f"cannot read slice {z} (page {page}) of {path}: it is truncated or corrupt "
                    f"({err})"
                ) from err
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


def _tiff_volume_shape(tif: tifffile.TiffFile, path: Path) -> tuple[int, ...]:
    """The series shape; a one-slice volume we wrote keeps its z axis (tifffile squeezes it)."""
    series = tif.series[0]
    if "S" in series.axes:
        raise ValueError(
            f"{path}: holds RGB/RGBA colour images (shape {series.shape}, axes {series.axes!r}); "
            "convert to greyscale first (e.g. skimage.color.rgb2gray, or Fiji: Image > Type > 8-bit)"
        )
    shape = tuple(int(s) for s in series.shape)
    own = tiff_metadata(tif, path)
    if own is not None and "shape" in own:
        stored = tuple(int(s) for s in own["shape"])
        if int(np.prod(stored)) == int(np.prod(shape)):
            return stored
    return shape


#: Bytes per voxel a slice costs while it is segmented or scanned, besides its own: float32 copies
#: (normalised, padded) and the comparisons of the checks.
_SLICE_WORK_BYTES = 8


def check_readable(shape: Sequence[int], dtype: npt.DTypeLike, path: Path, *, lazy: bool) -> None:
    """Refuse, before anything is allocated, a volume whose declared size cannot be read here.

    In memory (``lazy=False``) the whole array must fit in the memory available now; read lazily,
    one z-slice and its float32 working copies must.

    Raises
    ------
    InsufficientMemoryError
        A ValueError that gives the estimate, the memory available and what to do.
    """
    itemsize = np.dtype(dtype).itemsize
    dims = tuple(int(s) for s in shape)
    if lazy:
        if len(dims) >= 2:
            check_fits_memory(
                shape_bytes(dims[-2:], itemsize + _SLICE_WORK_BYTES),
                name=str(path),
                what=f"one slice of {dims[-2]}x{dims[-1]} voxels (with its working copies)",
                hint="crop or bin the volume first, or use a machine with more memory",
            )
        return
    check_fits_memory(shape_bytes(dims, itemsize), name=str(path), what=f"reading shape {dims}")


def _read_tiff(path: Path, dataset: str | None, lazy: bool) -> Any:
    _no_dataset(path, dataset)
    with open_tiff(path) as tif:
        shape = _tiff_volume_shape(tif, path)
        series = tif.series[0]
        n_pages = len(series.pages)
        contiguous = series.dataoffset is not None
        check_readable(shape, series.dtype, path, lazy=lazy)
        if not lazy:
            try:
                with quiet_tifffile():
                    data = tif.asarray(series=0)
            except TIFF_ERRORS as err:
                raise ValueError(
                    f"cannot read TIFF file {path}: it is truncated or corrupt ({err})"
                ) from err
            return data.reshape(shape)
        dtype = series.dtype
    if contiguous:
        try:
            return tifffile.memmap(path, series=0, mode="r").reshape(shape)
        except TIFF_ERRORS as err:
            logger.debug("%s cannot be memory-mapped (%s); reading it page by page", path, err)
    if len(shape) == 3 and n_pages == shape[0]:
        return LazySliceStack([(path, i) for i in range(n_pages)], shape, dtype)
    # Pages that are not z-slices (2D images, volumetric tiles): nothing to stream slice-wise.
    logger.info("%s: pages do not map to z-slices; reading it into memory", path)
    return _read_tiff(path, None, False)


def _read_tiff_folder(path: Path, dataset: str | None, lazy: bool) -> Any:
    _no_dataset(path, dataset)
    files = sorted(
        (
            f
            for f in path.iterdir()
            if f.suffix.lower() in TIFF_SUFFIXES and not f.name.startswith(".") and f.is_file()
        ),
        key=lambda f: natural_key(f.name),
    )
    if not files:
        raise ValueError(
            f"folder {path} holds no .tif/.tiff slices; supported inputs are: "
            + "; ".join(READ_FORMATS)
        )
    first_shape: tuple[int, ...] = ()
    first_dtype = np.dtype(np.uint8)
    for i, f in enumerate(files):
        with open_tiff(f) as tif:
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
    check_readable(stack.shape, stack.dtype, path, lazy=lazy)
    if lazy:
        return stack
    with stack:
        return stack[:]


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any], int] | None:
    """Shape, dtype and data offset a .npy header declares (None: not a plain .npy header)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as fh:
            if fh.read(6) != fmt.MAGIC_PREFIX:
                return None
            fh.seek(0)
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(fh)
            else:
                return None
            return tuple(int(s) for s in shape), np.dtype(dtype), fh.tell()
    except (ValueError, EOFError, SyntaxError, TypeError):
        return None


def _read_npy(path: Path, dataset: str | None, lazy: bool) -> Any:
    _no_dataset(path, dataset)
    header = _npy_header(path)
    if header is not None and not header[1].hasobject:
        shape, dtype, offset = header
        declared = shape_bytes(shape, dtype.itemsize)
        stored = path.stat().st_size - offset
        if declared > stored:
            raise ValueError(
                f"cannot read {path}: it is truncated or corrupt (its header declares shape "
                f"{shape} {dtype}, {format_bytes(declared, decimals=1)}, but the file holds "
                f"{format_bytes(max(0, stored), decimals=1)} of data)"
            )
        check_readable(shape, dtype, path, lazy=lazy)
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


def _read_zarr(path: Path, dataset: str | None, lazy: bool) -> Any:
    arr = zarr_array(path, dataset)
    check_readable(arr.shape, arr.dtype, path, lazy=lazy)
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
        check_readable(ds.shape, ds.dtype, path, lazy=lazy)
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

#: Input format (see :data:`~.formats.INPUT_FORMATS` for the endings) -> reader.
_READERS: dict[InputFormat, _Reader] = {
    "tiff": _read_tiff,
    "tiff-folder": _read_tiff_folder,
    "npy": _read_npy,
    "zarr": _read_zarr,
    "hdf5": _read_hdf5,
}


def _reader_for(p: Path) -> _Reader:
    return _READERS[input_format(p)]


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
    p = existing_path(path)
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
    p = existing_path(path)
    arr = np.asarray(_reader_for(p)(p, dataset, False))
    if arr.ndim != 3:
        raise ValueError(f"{p}: expected 3D labels (z, y, x), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(
            f"{p}: labels must be integer phase ids, got dtype {arr.dtype}; take the argmax first"
        )
    return arr


def open_volume(path: str | os.PathLike[str], *, dataset: str | None = None) -> Any:
    """The lazy array :func:`read_volume` returns with ``lazy=True``, without the data checks.

    For workers re-opening a volume that was already checked (dask tasks): cheap, no slice sampled.
    """
    p = existing_path(path)
    return _reader_for(p)(p, dataset, True)
