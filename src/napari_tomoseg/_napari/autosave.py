"""Where the annotations of a volume are kept between sessions, and how they are saved and restored.

image layer -> :func:`autosave_path` (``<volume file>.tomoseg-annotations.tif`` next to it, a ``.zarr``
store for a volume too big for memory, or in ``NAPARI_TOMOSEG_AUTOSAVE_DIR``) -> :func:`restore_annotations`
/ :func:`open_annotation_store` when the layer is created -> :func:`iter_save_annotations` (in a worker)
after each change. A file that napari-tomoseg did not write is never replaced.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg._napari.files import companion_path
from napari_tomoseg._napari.layers import check_image_layer, voxel_size
from napari_tomoseg.core.phases import PhaseTable

__all__ = [
    "AUTOSAVE_STORE_SUFFIX",
    "AUTOSAVE_SUFFIX",
    "Restored",
    "autosave_path",
    "is_ours",
    "iter_save_annotations",
    "open_annotation_store",
    "restore_annotations",
]

AUTOSAVE_SUFFIX = ".tomoseg-annotations.tif"
AUTOSAVE_STORE_SUFFIX = ".tomoseg-annotations.zarr"


def autosave_path(image: Any, folder: Path | None = None) -> Path:
    """Where the annotations of ``image`` are autosaved: next to its file (``<file>.tomoseg-
    annotations.tif``, or ``.zarr`` for a volume too big for memory), in ``folder`` if given, or in
    ``autosave_dir()`` for in-memory volumes."""
    from napari_tomoseg.core.io.labelstore import needs_store

    big = needs_store(check_image_layer(image).shape)
    return companion_path(image, AUTOSAVE_STORE_SUFFIX if big else AUTOSAVE_SUFFIX, folder)


def is_ours(path: Path) -> bool:
    """True if ``path`` is a label file written by napari-tomoseg (safe to replace by an autosave)."""
    from napari_tomoseg.core.io import read_label_phases

    try:
        return read_label_phases(path) is not None
    except (ValueError, OSError):
        return False


@dataclass(frozen=True)
class Restored:
    """Annotations found for a volume: the voxels (array or store), their phase table, the file."""

    data: Any
    phases: PhaseTable | None
    path: Path
    message: str | None  # for the user; None when nothing was restored (a new store)


def restore_annotations(image: Any, shape: tuple[int, ...], folder: Path | None) -> Restored | None:
    """The autosaved annotations of ``image`` (a uint8 array), or None if there are none of ours.

    Raises
    ------
    ValueError, OSError
        The file is ours but unreadable, or of another shape: the message says which.
    """
    path = autosave_path(image, folder)
    if not path.is_file() or not is_ours(path):
        return None
    from napari_tomoseg.core.io import read_label_phases, read_labels

    saved = read_labels(path)
    phases = read_label_phases(path)
    if saved.shape != shape:
        raise ValueError(
            f"annotations saved in {path} have shape {saved.shape}, the volume {shape}; not restored"
        )
    n = int(np.count_nonzero(saved))
    return Restored(
        saved.astype(np.uint8, copy=False),
        phases,
        path,
        f"Restored {n:,} annotated voxels from {path}",
    )


def open_annotation_store(
    image: Any, shape: tuple[int, ...], phases: PhaseTable, folder: Path | None
) -> Restored:
    """The annotations of a volume too big for memory: a zarr store next to it, reopened if it
    exists. Painting writes straight into it, so nothing is lost in a crash."""
    from napari_tomoseg.core.io.labelstore import (
        create_store,
        open_store,
        store_phases,
        summarize_labels,
    )

    path = autosave_path(image, folder)
    if path.exists():
        data = open_store(path, shape=shape, kind="labels")
        n = summarize_labels(data).labelled
        return Restored(
            data, store_phases(data), path, f"Restored {n:,} annotated voxels from {path}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    data = create_store(path, shape, phases=phases, voxel_size=voxel_size(image))
    return Restored(data, None, path, None)


def iter_save_annotations(
    path: Path, data: np.ndarray, phases: PhaseTable, voxel: tuple[float, float, float] | None
) -> Generator[None, None, Path]:
    """Write ``data`` to ``path`` atomically (run in a worker); refuses to replace a file not ours."""
    from napari_tomoseg.core.io import write_labels

    yield from ()
    if path.exists() and not is_ours(path):
        raise FileExistsError(
            f"{path} exists and was not written by napari-tomoseg; choose another autosave "
            "folder (Autosave folder…)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_labels(path, data, phases=phases, voxel_size=voxel, overwrite=True)
