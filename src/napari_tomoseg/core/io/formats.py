"""The file formats the io room knows: endings, opening TIFF and zarr files with clear errors, and
the layout of OME-Zarr groups.

path -> :func:`existing_path` -> :func:`input_format` (by ending; a folder is a zarr store or a folder
of TIFF slices) -> the reader registered for that format in :mod:`.volumes`
zarr group -> :func:`zarr_array_in` (the named array, the only one, or an OME-Zarr full resolution)

The lowest module of the room: it imports nothing else from napari_tomoseg.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import tifffile
import zarr

__all__ = [
    "INPUT_FORMATS",
    "READ_FORMATS",
    "TIFF_ERRORS",
    "TIFF_SUFFIXES",
    "WRITE_SUFFIXES",
    "ZARR_CHUNKS",
    "InputFormat",
    "existing_path",
    "input_format",
    "is_zarr_folder",
    "natural_key",
    "ome_full_resolution",
    "ome_multiscales",
    "open_tiff",
    "open_zarr",
    "quiet_tifffile",
    "zarr_array",
    "zarr_array_in",
]

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

#: Errors tifffile (and the codecs under it) raise on damaged files; our own ValueErrors are raised
#: outside the try blocks that catch these, so they are never re-wrapped.
TIFF_ERRORS: tuple[type[Exception], ...] = (
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

#: Chunks of the zarr volumes the io room writes (and of temporary rechunked copies).
ZARR_CHUNKS = (16, 512, 512)

InputFormat = Literal["tiff", "tiff-folder", "npy", "zarr", "hdf5"]

#: File ending -> input format; :mod:`.volumes` registers one reader per format. A folder that is not
#: a zarr store is read as a folder of TIFF slices.
INPUT_FORMATS: dict[str, InputFormat] = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".zarr": "zarr",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
}


class _Collect(logging.Filter):
    """Keeps the messages of the records it sees and lets none through."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[list[str]]:
    """Keep tifffile's complaints about a damaged file off stderr; yields the list they go to.

    A damaged file becomes one error of ours that says so; tifffile's own ERROR lines would only
    repeat it in its words.
    """
    logger = logging.getLogger("tifffile")
    collect = _Collect()
    logger.addFilter(collect)
    try:
        yield collect.messages
    finally:
        logger.removeFilter(collect)


def open_tiff(path: Path) -> tifffile.TiffFile:
    """Open a TIFF file; a damaged, truncated file or one that is not a TIFF raises a ValueError
    saying so (and tifffile's complaints stay off stderr).

    The first series is checked against the file before anything is read: every page it declares
    must be there, and its data must lie inside the file (uncompressed pages: all of it), so a
    header that declares a huge image is refused instead of allocated.
    """
    with quiet_tifffile() as complaints:
        try:
            tif = tifffile.TiffFile(path)
        except TIFF_ERRORS as err:
            raise ValueError(
                f"cannot read TIFF file {path}: it is truncated, damaged or not a TIFF ({err})"
            ) from err
        try:
            problem = _tiff_problem(tif)
            if problem is None and any("invalid page offset" in c for c in complaints):
                # The chain of pages points beyond the end: pages were cut off (tifffile then
                # falls back to the pages it found, e.g. one 2D image).
                problem = "its list of pages ends beyond the end of the file"
        except TIFF_ERRORS as err:
            problem = str(err)
        except BaseException:
            tif.close()
            raise
        if problem is not None:
            tif.close()
            said = f"; tifffile: {complaints[0]}" if complaints else ""
            raise ValueError(
                f"cannot read TIFF file {path}: it is truncated or corrupt ({problem}{said})"
            )
    return tif


def _tiff_problem(tif: tifffile.TiffFile) -> str | None:
    """What is wrong with the first series of ``tif`` (None: its data are all in the file)."""
    if not tif.series:
        return "no image in it"
    series = tif.series[0]
    imagej = tif.imagej_metadata if tif.is_imagej else None
    images = imagej.get("images") if isinstance(imagej, dict) else None
    if isinstance(images, int) and images > len(tif.pages):
        return f"it holds {len(tif.pages)} of the {images} images its ImageJ header declares"
    pages = [p for p in series.pages if p is not None]
    if not pages:
        return "no image data"
    size = int(tif.filehandle.size)
    page_shape = tuple(int(s) for s in pages[0].shape)
    per_page = 1
    for s in page_shape:
        per_page *= s
    declared = 1
    for s in series.shape:
        declared *= int(s)
    expected = declared // per_page if per_page else 0
    if len(pages) < expected:
        return f"it holds {len(pages)} of the {expected} pages its header declares"
    itemsize = series.dtype.itemsize
    for i, page in enumerate(pages):
        offsets, counts = page.dataoffsets, page.databytecounts
        if any(int(o) + int(c) > size for o, c in zip(offsets, counts, strict=False)):
            return f"page {i} has data beyond the end of the file ({size} bytes)"
        keyframe = getattr(page, "keyframe", page)
        bits = int(getattr(keyframe, "bitspersample", 8))
        if (
            int(keyframe.compression) == 1
            and bits >= 8
            and sum(int(c) for c in counts) < per_page * itemsize
        ):
            return (
                f"page {i} declares {'x'.join(map(str, page_shape))} pixels "
                f"({per_page * itemsize} bytes) but stores {sum(int(c) for c in counts)} bytes"
            )
    return None


def natural_key(name: str) -> list[Any]:
    """Sort key putting 'slice2' before 'slice10'."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def is_zarr_folder(path: Path) -> bool:
    """True if the folder ``path`` is a zarr store (v2 or v3), whatever its name ends with."""
    return any((path / f).is_file() for f in ("zarr.json", ".zarray", ".zgroup"))


def open_zarr(path: Path) -> Any:
    """Open the zarr array or group at ``path`` read-only; ValueError if it is not a zarr store."""
    try:
        return zarr.open(store=str(path), mode="r")
    except FileNotFoundError as err:  # includes zarr's NodeNotFoundError
        raise ValueError(
            f"{path} is not a zarr store (no zarr.json, .zarray or .zgroup found): {err}"
        ) from err
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"cannot read zarr store {path}: {err}") from err


def zarr_array(path: Path, dataset: str | None) -> Any:
    """The array ``dataset`` of the zarr store at ``path`` (see :func:`zarr_array_in`)."""
    return zarr_array_in(open_zarr(path), path, dataset)


def zarr_array_in(node: Any, path: Path, dataset: str | None) -> Any:
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
    full = ome_full_resolution(node)
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


def ome_multiscales(group: Any) -> list[dict[str, Any]]:
    """The ``multiscales`` entries of an OME-Zarr group (NGFF 0.4 keeps them at the top of the
    attributes, 0.5 under ``ome``); [] for anything else."""
    attrs = group.attrs.asdict()
    found = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales") or []
    return [ms for ms in found if isinstance(ms, dict)]


def ome_full_resolution(group: Any) -> str | None:
    """The path of the full-resolution array of an OME-Zarr (NGFF 0.4 / 0.5) multiscale group."""
    for ms in ome_multiscales(group):
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
        for k, a in sorted(group.members(max_depth=None), key=lambda m: natural_key(m[0]))
        if isinstance(a, zarr.Array)
    ]
    return ", ".join(items) or "no arrays"


def existing_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``~`` expanded; FileNotFoundError if nothing is there."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(errno.ENOENT, "no such file or folder", str(p))
    return p


def input_format(p: Path) -> InputFormat:
    """The input format of the existing file or folder ``p``, by its ending.

    Raises
    ------
    ValueError
        If the ending is not one :func:`~napari_tomoseg.core.io.read_volume` reads.
    """
    suffix = p.suffix.lower()
    if p.is_dir():
        return "zarr" if suffix == ".zarr" or is_zarr_folder(p) else "tiff-folder"
    fmt = INPUT_FORMATS.get(suffix)
    if fmt is None:
        raise ValueError(
            f"cannot read {p}: unsupported file type {suffix or '(no ending)'!r}; supported "
            "inputs are: " + "; ".join(READ_FORMATS)
        )
    return fmt
