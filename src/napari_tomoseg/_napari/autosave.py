"""Where the annotations of a volume are kept between sessions, and how they are saved and restored.

image layer -> :func:`autosave_path` (one file per source, see
:func:`~napari_tomoseg._napari.files.source_identity`: ``<volume file>.tomoseg-annotations.tif`` next
to the file, a ``.zarr`` store for a volume too big for memory, or ``<name>-<key>...`` in a chosen
folder or ``NAPARI_TOMOSEG_AUTOSAVE_DIR`` when the volume's folder is read-only or it has no file) ->
:func:`restore_annotations` / :func:`open_annotation_store` when the layer is created (only ever the
file of that same source; the message says what was restored and from where) ->
:func:`iter_save_annotations` (in a worker) after each change, which also removes hidden partial files
that an interrupted save left behind. A file that napari-tomoseg did not write is never replaced.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg._napari.files import companion_path, source_identity
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
    "remove_stale_partials",
    "restore_annotations",
]

AUTOSAVE_SUFFIX = ".tomoseg-annotations.tif"
AUTOSAVE_STORE_SUFFIX = ".tomoseg-annotations.zarr"
#: A hidden partial autosave this old belongs to a save that died (an autosave of a volume that fits
#: in memory takes seconds); the next save removes it.
STALE_PARTIAL_SECONDS = 300.0


def autosave_path(image: Any, folder: Path | None = None) -> Path:
    """Where the annotations of ``image`` are autosaved: one file per source volume.

    Next to its (resolved) file as ``<file>.tomoseg-annotations.tif`` (``.zarr`` for a volume too
    big for memory); otherwise, in ``folder`` if given, else in ``autosave_dir()``, as
    ``<name>-<key>.tomoseg-annotations.tif`` where the key is a hash of the file's resolved path or
    the id of a volume without a file (see :func:`~napari_tomoseg._napari.files.source_identity`):
    two volumes of the same name never share an autosave.

    Raises
    ------
    ValueError
        If that path would be the volume's own file.
    """
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
        f"Restored {n:,} annotated voxels of {source_identity(image).description} from {path}",
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
        what = source_identity(image).description
        return Restored(
            data, store_phases(data), path, f"Restored {n:,} annotated voxels of {what} from {path}"
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
    remove_stale_partials(path)
    if path.exists() and not is_ours(path):
        raise FileExistsError(
            f"{path} exists and was not written by napari-tomoseg; choose another autosave "
            "folder (Autosave folder…)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_labels(path, data, phases=phases, voxel_size=voxel, overwrite=True)


def remove_stale_partials(path: Path, older_than: float = STALE_PARTIAL_SECONDS) -> list[Path]:
    """Delete the hidden partial files of ``path`` that a save killed midway left behind: those whose
    name says their process is gone (the core's ``remove_stale_temporaries``), and any other
    ``.<name>.*.partial*`` not touched for ``older_than`` seconds (a live save, perhaps of another
    napari, is younger). Returns what was removed; a file that cannot be removed is left."""
    from napari_tomoseg.core.io.write import remove_path, remove_stale_temporaries

    if not path.parent.is_dir():
        return []
    removed = remove_stale_temporaries(path.parent)
    now = time.time()
    prefix = f".{path.name}."
    for p in path.parent.iterdir():
        if not p.name.startswith(prefix) or ".partial" not in p.name[len(prefix) :]:
            continue
        try:
            if now - p.lstat().st_mtime < older_than:
                continue
        except OSError:
            continue
        remove_path(p)
        if not p.exists():
            removed.append(p)
    return removed
