"""Checks made where data are read: non-finite voxels per block, and memory before a big read.

reader / pipeline block -> :func:`check_finite` (one cheap reduction; the exact slice only when it
fails) -> :class:`NonFiniteError` naming the first offending z-slice
lazy volume -> :func:`finite_checked` (a read-only view that checks every block it returns)
declared shape -> :func:`check_fits_memory` (against :func:`available_memory`) before anything is
allocated -> :class:`InsufficientMemoryError` saying what to do instead

Shared by the io, prep, segment and learn rooms; numpy and the standard library only, so that a
module needing a finite check does not import the io room (zarr, tifffile) with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "FiniteCheckedVolume",
    "InsufficientMemoryError",
    "NonFiniteError",
    "available_memory",
    "check_finite",
    "check_fits_memory",
    "finite_checked",
    "format_bytes",
    "shape_bytes",
]


class NonFiniteError(ValueError):
    """A float volume holds NaN or infinite values; ``z`` is the first offending z-slice found."""

    def __init__(self, name: str, z: int | None, *, counts: str = "") -> None:
        self.name = name
        self.z = z
        where = f"z-slice {z}" if z is not None else "a slice"
        what = (
            f"contains {counts} ({where} first)"
            if counts
            else f"{where} holds NaN or infinite values"
        )
        super().__init__(
            f"{name}: {what}; replace them first, e.g. "
            "np.nan_to_num(volume, nan=0.0, posinf=0.0, neginf=0.0)"
        )


class InsufficientMemoryError(ValueError):
    """Reading or building something would need more memory than the machine has available."""


def _is_float(dtype: Any) -> bool:
    return np.dtype(dtype).kind == "f"


def first_nonfinite(block: npt.ArrayLike, axis: int = 0) -> int | None:
    """Index along ``axis`` of the first plane of ``block`` holding NaN or inf (None: all finite).

    A float64 sum is one pass without a temporary array; NaN and inf survive it (inf - inf is NaN),
    so only a block that fails it is searched plane by plane.
    """
    arr = np.asarray(block)
    if not _is_float(arr.dtype) or arr.size == 0:
        return None
    if np.isfinite(np.sum(arr, dtype=np.float64)):
        return None
    bad = ~np.isfinite(arr)
    other = tuple(a for a in range(arr.ndim) if a != axis)
    rows = bad.any(axis=other) if other else bad
    hits = np.flatnonzero(rows)
    return int(hits[0]) if hits.size else None


def check_finite(
    block: npt.ArrayLike, *, name: str = "volume", z0: int = 0, z_step: int = 1
) -> None:
    """Raise :class:`NonFiniteError` if the float ``block`` (z first) holds NaN or inf.

    Parameters
    ----------
    block
        The block just read, z along its first axis (integer blocks pass at no cost).
    name
        The volume's name (its file) for the message.
    z0, z_step
        The volume's z-slice of the block's first plane, and the step between planes (a strided
        read), so that the message names the slice in the volume.
    """
    j = first_nonfinite(block)
    if j is not None:
        raise NonFiniteError(name, z0 + j * z_step)


class FiniteCheckedVolume:
    """A read-only view of a float volume that checks every block it returns for NaN and inf.

    ``view[key]`` reads ``volume[key]`` and raises :class:`NonFiniteError` naming the volume's first
    offending z-slice in the block; the values are returned unchanged. ``shape``, ``dtype`` and
    ``ndim`` are the volume's, other attributes (``chunks``...) are passed through; it pickles
    with the volume (dask workers).
    """

    def __init__(self, volume: Any, name: str = "volume") -> None:
        self.volume = volume
        self.name = name
        self.shape = tuple(int(s) for s in volume.shape)
        self.dtype = np.dtype(volume.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"FiniteCheckedVolume({self.volume!r})"

    def __getattr__(self, attr: str) -> Any:
        if attr == "volume":  # not set yet (unpickling): no recursion
            raise AttributeError(attr)
        return getattr(self.volume, attr)

    def __getstate__(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        data = self[...]
        return data if dtype is None else data.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        data = np.asarray(self.volume[key])
        j = first_nonfinite(data if data.ndim else data.reshape(1))
        if j is not None:
            raise NonFiniteError(self.name, _z_of(key, self.shape[0], j, data.ndim == self.ndim))
        return data


def _z_of(key: Any, n: int, j: int, kept: bool) -> int | None:
    """The volume's z-slice of plane ``j`` of the result of ``volume[key]`` (None: not known)."""
    first = key[0] if isinstance(key, tuple) and key else key
    if first is Ellipsis or (isinstance(key, tuple) and not key):
        first = slice(None)
    if isinstance(first, (int, np.integer)):
        return int(first) % n
    if not kept:
        return None
    if isinstance(first, slice):
        zs = range(*first.indices(n))
        return zs[j] if j < len(zs) else None
    sel = np.asarray(first)
    if sel.dtype == bool and sel.shape == (n,):
        hits = np.flatnonzero(sel)
        return int(hits[j]) if j < hits.size else None
    if sel.ndim == 1 and sel.dtype.kind in "iu" and j < sel.size:
        return int(sel[j]) % n
    return None


def finite_checked(volume: Any, name: str = "volume") -> Any:
    """``volume`` itself when it cannot hold NaN (integers), else a :class:`FiniteCheckedVolume`."""
    if isinstance(volume, FiniteCheckedVolume) or not _is_float(volume.dtype):
        return volume
    return FiniteCheckedVolume(volume, name)


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (None when the system does not say).

    ``MemAvailable`` of ``/proc/meminfo`` (Linux; it counts reclaimable caches), else the free
    physical pages. A cgroup limit (containers) lowers it when it is smaller.
    """
    found: int | None = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        found = None
    if found is None:
        try:
            found = int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
            if text == "max":
                continue
            with open(usage_file) as fh:
                usage = int(fh.read().strip())
            found = min(found, max(0, int(text) - usage))
        except (OSError, ValueError):
            continue
    return found


def format_bytes(n: float, *, decimals: int = 2) -> str:
    """``n`` bytes in the largest fitting decimal unit: ``1.23 GB`` (as ``parse_memory`` reads it back).

    ``decimals`` digits after the point; whole bytes below a kilobyte (``512 B``).
    """
    for unit, f in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.{decimals}f} {unit}"
    return f"{n:.0f} B"


def check_fits_memory(
    nbytes: float,
    *,
    name: str,
    what: str = "reading it whole",
    hint: str = "open it lazily or convert it to zarr (chunked), which is read block by block",
) -> None:
    """Raise :class:`InsufficientMemoryError` if ``nbytes`` exceed the memory available now.

    Parameters
    ----------
    nbytes
        The estimate (e.g. a declared shape times the item size).
    name
        The file, for the message.
    what
        What needs the memory, for the message.
    hint
        What to do instead.
    """
    available = available_memory()
    if available is None or nbytes <= available:
        return
    raise InsufficientMemoryError(
        f"{name}: {what} needs about {format_bytes(nbytes, decimals=1)} of memory, but only "
        f"{format_bytes(available, decimals=1)} is available; {hint}"
    )


def shape_bytes(shape: Sequence[int], itemsize: int) -> int:
    """Bytes of an array of ``shape`` (Python ints: no overflow for absurd declared shapes)."""
    n = 1
    for s in shape:
        n *= max(0, int(s))
    return n * int(itemsize)
