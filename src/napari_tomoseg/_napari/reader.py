"""File > Open for volumes napari does not open well: folders of TIFF slices, zarr, HDF5, .npy, and
TIFF stacks with their voxel size.

path -> :func:`napari_get_reader` (by ending / folder) -> :func:`read_path` -> core.io (lazy)
-> one image layer (``scale`` = voxel size in µm; dask-backed, so nothing is read until shown;
multiscale for an OME-Zarr with several levels) or, for label files napari-tomoseg wrote, a labels
layer with the phase names and colours (a big one stays in its zarr store).

Imports numpy, tifffile and zarr only (through core.io): never torch, never Qt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg.core import io

LayerData = tuple[Any, dict[str, Any], str]

#: Endings this reader claims (napari asks the user to pick a reader when another plugin also does).
SUFFIXES = (".tif", ".tiff", ".npy", ".zarr", ".h5", ".hdf5")


def napari_get_reader(path: str | list[str]) -> Any:
    """Return :func:`read_path` if ``path`` is something napari-tomoseg can open, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None  # several files: a stack of 2D images is napari's own business
        path = path[0]
    p = Path(path)
    if p.is_dir():
        if p.suffix.lower() == ".zarr" or io.is_zarr_folder(p) or _has_tiff_slices(p):
            return read_path
        return None
    if p.suffix.lower() in SUFFIXES:
        return read_path
    return None


def _has_tiff_slices(folder: Path) -> bool:
    try:
        return any(f.suffix.lower() in io.TIFF_SUFFIXES for f in folder.iterdir() if f.is_file())
    except OSError:
        return False


def read_path(path: str | list[str]) -> list[LayerData]:
    """Read one volume (or one napari-tomoseg label file) as napari layer data.

    Raises
    ------
    ValueError, FileNotFoundError
        With a message that says what is wrong (napari shows it as a notification).
    """
    if isinstance(path, list):
        path = path[0]
    p = Path(path)
    name = p.stem if p.suffix.lower() != ".zarr" else p.name[: -len(".zarr")]
    voxel = io.read_voxel_size(p)
    geometry: dict[str, Any] = {}
    if voxel is not None:
        geometry = {"scale": voxel, "units": ("µm",) * 3}
    phases = io.read_label_phases(p)
    if phases is not None:
        labels = _labels(p)
        colours: dict[Any, Any] = {None: "transparent", 0: "transparent", **phases.colour_dict()}
        from napari.utils.colormaps import DirectLabelColormap

        return [
            (
                labels,
                {
                    "name": name,
                    "colormap": DirectLabelColormap(color_dict=colours),
                    "features": {"index": [0, *phases.ids], "phase": ["none", *phases.names]},
                    "metadata": {"source_path": str(p), "tomoseg_phases": phases.to_json()},
                    **geometry,
                },
                "labels",
            )
        ]
    levels = io.read_volume_dask(p)
    extra: dict[str, Any] = {"multiscale": True} if len(levels) > 1 else {}
    return [
        (
            levels if len(levels) > 1 else levels[0],
            {"name": name, "metadata": {"source_path": str(p)}, **geometry, **extra},
            "image",
        )
    ]


def _labels(path: Path) -> Any:
    """A label file's data: in memory, or, for a store of a volume too big for memory (such as the
    prediction or annotations napari-tomoseg keeps next to a big volume), the store itself, opened
    for painting."""
    from napari_tomoseg.core.io.labelstore import needs_store, open_store

    try:
        store = open_store(path, kind="labels")
    except ValueError:  # not one of our stores (a TIFF, a zarr another tool wrote)
        return io.read_labels(path).astype(np.uint8, copy=False)
    return store if needs_store(store.shape) else np.asarray(store[...], dtype=np.uint8)
