"""Write grey volumes and phase-label volumes atomically, in the format given by the ending.

volume / labels -> :func:`check_output_path` (before any work) -> slab by slab, converted (labels to
uint8, checked against the phase table) -> a hidden temporary file next to the output
(:func:`atomic_output`) -> renamed onto the output only when complete

========================  =====================================================================
ending                    written as
========================  =====================================================================
``.tif`` / ``.tiff``      ImageJ hyperstack (uint8/uint16/float32 below 4 GB) or tifffile's
                          shaped (Big)TIFF; zlib for labels; metadata as JSON in the file
``.npy``                  ``.npy`` (no metadata)
``.zarr``                 a plain zarr v3 array, metadata in ``attrs["tomoseg"]``
========================  =====================================================================

An interrupted or failed write (disk full) leaves neither a partial output nor a damaged existing
file. Existing outputs are replaced only with ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from napari_tomoseg.core.io.formats import (
    TIFF_SUFFIXES,
    WRITE_SUFFIXES,
    ZARR_CHUNKS,
    is_zarr_folder,
)
from napari_tomoseg.core.io.metadata import METADATA_KEY, check_voxel_size, file_metadata
from napari_tomoseg.core.io.volumes import iter_slabs
from napari_tomoseg.core.phases import PhaseTable

__all__ = [
    "TEMP_MARK",
    "OutputIsInputError",
    "atomic_output",
    "check_not_input",
    "check_output_path",
    "check_writable_folder",
    "create_uint8_store",
    "remove_path",
    "remove_stale_temporaries",
    "temp_path",
    "write_labels",
    "write_volume",
]

logger = logging.getLogger(__name__)

# tifffile switches to BigTIFF above this size; ImageJ cannot read compressed BigTIFF.
_CLASSIC_TIFF_LIMIT = 2**32 - 2**25
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


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
        if p.is_dir() and not p.is_symlink() and (suffix != ".zarr" or not is_zarr_folder(p)):
            raise FileExistsError(
                errno.EEXIST,
                "output is a folder that is not a zarr store; refusing to replace it, choose "
                "another output path",
                str(p),
            )
    check_writable_folder(parent)
    # What a killed run on this output folder left behind goes before the new run starts.
    remove_stale_temporaries(parent)
    return p


#: Every temporary file or folder napari-tomoseg makes carries this in its name, followed by the
#: machine and the process that made it: ``.<output name>.tomoseg-tmp-<host>-<pid>-<random>.<tag>``.
TEMP_MARK = "tomoseg-tmp"
_TEMP_RE = re.compile(rf"^\..*\.{TEMP_MARK}-([0-9a-f]{{8}})-(\d+)-[0-9a-f]+\.")


def _host_id() -> str:
    # Short and filename-safe; a pid is only meaningful on the machine that made the file.
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(path: Path, tag: str) -> Path:
    """A fresh hidden name next to ``path`` for work in progress:
    ``.name.tomoseg-tmp-<host>-<pid>-<random>.<tag><suffix>``.

    The machine and process in the name let a later run remove what a killed one left behind
    (:func:`remove_stale_temporaries`).
    """
    mark = f"{TEMP_MARK}-{_host_id()}-{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}.{mark}.{tag}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files and stores that killed runs on this machine left in ``folder``.

    Only names made by :func:`temp_path` count, and only those whose process is gone: a run in
    progress (here or on another machine sharing the folder) is never touched.

    Returns
    -------
    list of pathlib.Path
        What was removed.
    """
    d = Path(folder).expanduser()
    removed: list[Path] = []
    try:
        entries = list(d.iterdir())
    except OSError:
        return removed
    host = _host_id()
    for entry in entries:
        m = _TEMP_RE.match(entry.name)
        if m is None or m.group(1) != host or _pid_alive(int(m.group(2))):
            continue
        remove_path(entry)
        if not (entry.exists() or entry.is_symlink()):
            removed.append(entry)
            logger.info("removed %s, left behind by an interrupted run", entry)
    return removed


class OutputIsInputError(ValueError):
    """An output path that resolves to one of the inputs (or inside one): writing it would lose it."""


def _same_or_inside(out: Path, inp: Path) -> str | None:
    """How ``out`` would overwrite ``inp`` (None: it would not)."""
    if not (inp.exists() or inp.is_symlink()):
        return None
    try:
        if out.exists() and os.path.samefile(out, inp):  # symlinks and hard links: st_dev/st_ino
            return "is the same file as"
    except OSError:
        pass
    r_out, r_in = out.resolve(), inp.resolve()
    if r_out == r_in:
        return "is the same file as"
    if r_in.is_dir() and r_out.is_relative_to(r_in):
        return "is inside"
    if r_in.is_relative_to(r_out):
        return "holds"
    return None


def check_not_input(
    output: str | os.PathLike[str] | None,
    inputs: Iterable[str | os.PathLike[str] | None],
) -> None:
    """Refuse an output that would overwrite one of the inputs, with or without ``overwrite``.

    The same path, a symlink or hard link to an input (compared by device and inode), a path
    inside an input folder (a zarr store, a folder of slices) or a folder holding an input all count.

    Parameters
    ----------
    output
        The path about to be written (None: nothing to check).
    inputs
        The paths read by the same command (None entries are skipped).

    Raises
    ------
    OutputIsInputError
        A ValueError naming both paths.
    """
    if output is None:
        return
    out = Path(output).expanduser()
    for given in inputs:
        if given is None:
            continue
        how = _same_or_inside(out, Path(given).expanduser())
        if how is not None:
            raise OutputIsInputError(
                f"the output {out} {how} the input {given}; it would be overwritten: write to "
                "another path"
            )


def check_writable_folder(folder: str | os.PathLike[str]) -> Path:
    """Check that files can be created in ``folder`` (exists, is a folder, is writable), by trying.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist or is not a folder.
    PermissionError
        If nothing can be created in it.
    """
    d = Path(folder).expanduser()
    if not d.is_dir():
        what = "is not a folder" if d.exists() else "does not exist"
        raise FileNotFoundError(
            errno.ENOENT, f"output folder {what}; create it first (mkdir -p)", str(d)
        )
    if not os.access(d, os.W_OK):
        raise PermissionError(
            errno.EACCES, "cannot write to the output folder; choose another", str(d)
        )
    probe = temp_path(d / "probe", "probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as err:
        raise PermissionError(
            err.errno or errno.EACCES,
            f"cannot write to the output folder ({err.strerror}); choose another",
            str(d),
        ) from err
    with contextlib.suppress(OSError):
        probe.unlink()
    return d


def remove_path(path: Path) -> None:
    """Delete a file or folder if it exists; errors inside a folder are ignored (best-effort cleanup)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_output(path: Path, *, overwrite: bool, folder: bool) -> Iterator[Path]:
    """Yield a fresh temporary file (or, with ``folder``, folder) next to ``path``; move it onto
    ``path`` only when the block succeeds, delete it on any error.

    Parameters
    ----------
    path
        The final output; checked already (:func:`check_output_path`).
    overwrite
        Replace ``path`` if it exists by then (FileExistsError otherwise).
    folder
        Create a folder (a zarr store) rather than an empty file.
    """
    tmp = temp_path(path, "partial")
    if folder:
        os.mkdir(tmp)
    else:
        # O_EXCL: never clobber anything; mode 0o666 so the umask applies as for any new file.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _commit(tmp, path, overwrite=overwrite)
    except BaseException:
        remove_path(tmp)
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
    backup = temp_path(path, "replaced")
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


def _phase_lut(phases: PhaseTable) -> np.ndarray:
    """ImageJ lookup table (3, 256): each phase id in its colour, 0 black."""
    lut = np.zeros((3, 256), dtype=np.uint8)
    for p in phases.phases:
        lut[:, p.id] = [int(p.colour[i : i + 2], 16) for i in (1, 3, 5)]
    return lut


_Convert = Callable[[np.ndarray], np.ndarray]


def _converted_slabs(volume: Any, convert: _Convert, step: int = 1) -> Iterator[np.ndarray]:
    for slab in iter_slabs(volume, step):
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
    chunks = tuple(min(c, s) for c, s in zip(ZARR_CHUNKS, shape, strict=True))
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
    with atomic_output(path, overwrite=overwrite, folder=suffix == ".zarr") as tmp:
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
    voxel = check_voxel_size(voxel_size)
    return _write(
        p,
        volume,
        dtype=out_dtype,
        convert=lambda slab: slab.astype(out_dtype, copy=False),
        meta=file_metadata("volume", shape, voxel, None),
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
    voxel = check_voxel_size(voxel_size)
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
        meta=file_metadata("labels", shape, voxel, phases),
        overwrite=overwrite,
        compress=True,
        phases=phases,
    )


def create_uint8_store(
    store: Path, shape: tuple[int, ...], chunks: Sequence[int], meta: dict[str, Any]
) -> Any:
    """A new uint8 zarr v3 array of zeros (nothing stored until written) with our metadata.

    Parameters
    ----------
    store
        Folder of the new store; it must not hold one already.
    shape
        ``(z, y, x)``.
    chunks
        Chunk shape, clipped to ``shape``.
    meta
        The metadata block (:func:`~.metadata.file_metadata`), stored under ``attrs["tomoseg"]``.

    Returns
    -------
    zarr.Array
        Open for writing, ``dimension_names`` ``("z", "y", "x")``, fill value 0.
    """
    return zarr.create_array(
        store=str(store),
        shape=shape,
        dtype=np.uint8,
        chunks=tuple(min(int(c), s) for c, s in zip(chunks, shape, strict=True)),
        fill_value=0,
        attributes={METADATA_KEY: meta},
        dimension_names=("z", "y", "x"),
    )
