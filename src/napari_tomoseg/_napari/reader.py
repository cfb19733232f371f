"""File > Open for volumes napari does not open well: folders of TIFF slices, zarr, HDF5, .npy, and
TIFF stacks with their voxel size.

path -> :func:`napari_get_reader` (by ending / folder) -> :func:`read_path` -> core.io (lazy)
-> one image layer (``scale`` = voxel size in µm; dask-backed, so only a few sampled slices are read
before one is shown, for the contrast limits: the 0.5-99.5 percentile range of the grey values;
multiscale for an OME-Zarr with several levels) or, for label files napari-tomoseg wrote, a labels
layer with the phase names and colours (a big one stays in its zarr store).

napari asks which reader to use when several claim a file (its own reader claims .tif, .npy and
.zarr too); :func:`prefer_for_session` makes napari-tomoseg the choice for ``tomoseg gui``'s session
without touching the user's saved napari settings.

Imports numpy, tifffile and zarr only (through core.io): never torch, never Qt.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg.core import io

log = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]

PLUGIN = "napari-tomoseg"
#: Endings this reader claims (napari asks the user to pick a reader when another plugin also does).
SUFFIXES = (".tif", ".tiff", ".npy", ".zarr", ".h5", ".hdf5")
#: napari's preference patterns for those endings (a folder's path is matched with a trailing "/").
PATTERNS = ("*.tif", "*.tiff", "*.npy", "*.zarr/", "*.h5", "*.hdf5")
#: Grey values sampled for the contrast limits: a few whole slices, strided in the plane.
CONTRAST_SAMPLES = 1_000_000
CONTRAST_SLICES = 8
#: The environment variable napari reads its reader preferences from (merged over its settings
#: file, never written to it).
_PREFERENCE_ENV = "NAPARI_PLUGINS_EXTENSION2READER"


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
    limits = contrast_range(levels[-1])
    if limits is not None:
        extra["contrast_limits"] = list(limits)
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


def contrast_range(volume: Any) -> tuple[float, float] | None:
    """Contrast limits for ``volume``: the 0.5 and 99.5 percentiles of its grey values.

    Estimated from at most :data:`CONTRAST_SLICES` evenly spaced slices along the first axis, strided
    in the plane to about :data:`CONTRAST_SAMPLES` values, so a big (dask, zarr) volume reads only
    those slices. None when the sample is constant or not finite (napari then chooses).
    """
    from napari_tomoseg.core.prep.intensity import robust_range

    shape = tuple(int(s) for s in volume.shape)
    if len(shape) < 2 or 0 in shape:
        return None
    zs = np.unique(np.linspace(0, shape[0] - 1, min(shape[0], CONTRAST_SLICES)).round().astype(int))
    plane = math.prod(shape[1:])
    step = max(
        1, math.ceil((plane / max(1, CONTRAST_SAMPLES // len(zs))) ** (1 / (len(shape) - 1)))
    )
    strided = (slice(None, None, step),) * (len(shape) - 1)
    sample = np.concatenate([np.asarray(volume[(int(z), *strided)]).ravel() for z in zs])
    if sample.dtype == bool or not np.issubdtype(sample.dtype, np.number):
        return None
    try:
        return robust_range(sample, max_samples=sample.size)
    except ValueError:  # constant, NaN or inf: leave the choice to napari
        return None


def prefer_for_session() -> dict[str, str]:
    """Make napari-tomoseg napari's reader for its endings in this process, where the user has chosen
    no reader for them; returns the patterns it added.

    napari shows a "Choose reader" dialog when several plugins read a file and no preference is set
    (``settings.plugins.extension2reader``). The preference is given through the environment
    variable napari reads at start, which napari merges over its settings file and never saves, so
    the user's saved settings are untouched and a plain ``napari`` keeps asking. Call it before
    napari loads its settings (before the first viewer); once they are loaded, it changes nothing. A
    preference the user saved for an ending (in the settings file or in that variable) is kept.
    """
    try:
        env = json.loads(os.environ.get(_PREFERENCE_ENV) or "{}")
    except json.JSONDecodeError:
        log.warning(
            "%s is not JSON; napari-tomoseg leaves the reader choice to napari", _PREFERENCE_ENV
        )
        return {}
    if not isinstance(env, dict):
        return {}
    added = {pattern: PLUGIN for pattern in PATTERNS if pattern not in env}
    if not added:
        return {}
    os.environ[_PREFERENCE_ENV] = json.dumps({**env, **added})
    from napari.settings import get_settings

    settings = get_settings()
    saved = settings.config_file_settings.get("plugins", {}).get("extension2reader", {})
    kept = {p: saved[p] for p in added if p in saved and saved[p] != PLUGIN}
    if kept:
        # The user's saved choice wins; assigning it again leaves the settings file as it was.
        settings.plugins.extension2reader = {**settings.plugins.extension2reader, **kept}
    # Settings loaded before this call did not read the variable: nothing changed then.
    now = settings.plugins.extension2reader
    return {p: PLUGIN for p in added if p not in kept and now.get(p) == PLUGIN}
