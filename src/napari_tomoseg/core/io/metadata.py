"""What files say about themselves: napari-tomoseg's metadata block (kind, shape, phase table, voxel
size), ImageJ and OME-Zarr calibrations, and length units.

labels + phases + voxel size -> :func:`file_metadata` -> a JSON block stored in the file by :mod:`.write`
path -> :func:`read_voxel_size` (our block, else ImageJ spacing, else OME-Zarr scale) -> (z, y, x) in µm
path -> :func:`read_label_phases` -> the phase table a label file was written with

Voxel sizes are ``(z, y, x)`` in micrometres throughout.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from napari_tomoseg.core.io.formats import (
    existing_path,
    input_format,
    ome_full_resolution,
    ome_multiscales,
    open_tiff,
    open_zarr,
    zarr_array,
    zarr_array_in,
)
from napari_tomoseg.core.phases import PhaseTable

__all__ = [
    "LENGTH_UNITS_UM",
    "METADATA_KEY",
    "METADATA_VERSION",
    "check_voxel_size",
    "file_metadata",
    "read_label_phases",
    "read_voxel_size",
    "tiff_metadata",
]

logger = logging.getLogger(__name__)

#: Key of our own metadata in TIFF (ImageJ ``Properties`` or shaped JSON) and zarr attributes.
METADATA_KEY = "tomoseg"
#: Version of the metadata block, stored in it as ``version``.
METADATA_VERSION = 1

#: Length units (ImageJ and OME-Zarr spellings, and what people type), in micrometres.
LENGTH_UNITS_UM: dict[str, float] = {
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
    "nanometers": 1e-3,
    "nanometres": 1e-3,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "millimeters": 1e3,
    "millimetres": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "a": 1e-4,
    "å": 1e-4,
    "angstrom": 1e-4,
}


def check_voxel_size(voxel_size: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``voxel_size`` as three positive finite floats ``(z, y, x)`` in µm, or None if it is None.

    Raises
    ------
    ValueError
        If it is not three positive finite numbers.
    """
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


def tiff_metadata(tif: tifffile.TiffFile, path: Path) -> dict[str, Any] | None:
    """Our metadata block in an open TIFF file (ImageJ ``Properties`` or tifffile's shaped JSON
    description), or None if it has none.

    Raises
    ------
    ValueError
        If the block is there but is not a JSON object (``path`` names the file in the message).
    """
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


def _unit_factor(unit: Any) -> float | None:
    """Micrometres per ``unit``; None for pixels or unknown units."""
    if not isinstance(unit, str):
        return None
    key = unit.strip().lower().replace("\\u00b5", "µ")
    return LENGTH_UNITS_UM.get(key)


def _own_voxel_size(meta: dict[str, Any] | None) -> tuple[float, float, float] | None:
    if not meta or meta.get("voxel_size_um") is None:
        return None
    try:
        return check_voxel_size(meta["voxel_size_um"])
    except ValueError:
        logger.warning("ignoring malformed voxel size %r in file metadata", meta["voxel_size_um"])
        return None


def _tiff_voxel_size(path: Path) -> tuple[float, float, float] | None:
    with open_tiff(path) as tif:
        own = _own_voxel_size(tiff_metadata(tif, path))
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
    return check_voxel_size((spacing * factor, factor / yres, factor / xres))


def _zarr_voxel_size(path: Path, dataset: str | None) -> tuple[float, float, float] | None:
    group = open_zarr(path)
    own = _own_voxel_size(zarr_array_in(group, path, dataset).attrs.get(METADATA_KEY))
    if own is not None or isinstance(group, zarr.Array):
        return own
    dataset = dataset if dataset is not None else ome_full_resolution(group)
    # OME-Zarr (NGFF 0.4 / 0.5): the scale of `dataset` in the group's multiscales.
    for ms in ome_multiscales(group):
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
            return check_voxel_size(sizes)
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
    p = existing_path(path)
    fmt = input_format(p)
    if fmt == "tiff":
        return _tiff_voxel_size(p)
    if fmt == "zarr":
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
    p = existing_path(path)
    fmt = input_format(p)
    meta: dict[str, Any] | None = None
    if fmt == "tiff":
        with open_tiff(p) as tif:
            meta = tiff_metadata(tif, p)
    elif fmt == "zarr":
        raw = zarr_array(p, dataset).attrs.get(METADATA_KEY)
        meta = raw if isinstance(raw, dict) else None
    if not meta or not meta.get("phases"):
        return None
    try:
        return PhaseTable.from_json(meta["phases"])
    except ValueError as err:
        raise ValueError(f"{p}: the stored phase table is malformed ({err})") from err


def file_metadata(
    kind: str,
    shape: tuple[int, ...],
    voxel_size: tuple[float, float, float] | None,
    phases: PhaseTable | None,
) -> dict[str, Any]:
    """The metadata block napari-tomoseg stores with a file it writes (under :data:`METADATA_KEY`).

    Parameters
    ----------
    kind
        ``"labels"`` or ``"volume"``.
    shape
        ``(z, y, x)``; kept so that a one-slice volume keeps its z axis.
    voxel_size
        ``(z, y, x)`` in µm (checked with :func:`check_voxel_size`), or None.
    phases
        The phase table of a label file, or None.

    Returns
    -------
    dict
        A JSON-serialisable dict: ``format``, ``version``, ``kind``, ``shape`` and, when given,
        ``voxel_size_um`` and ``phases``.
    """
    meta: dict[str, Any] = {
        "format": "napari-tomoseg",
        "version": METADATA_VERSION,
        "kind": kind,
        "shape": list(shape),
    }
    if voxel_size is not None:
        meta["voxel_size_um"] = list(voxel_size)
    if phases is not None:
        meta["phases"] = phases.to_json()
    return meta
