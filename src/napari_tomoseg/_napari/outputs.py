"""Files the dock widgets write or read at the user's request: dialogs that never replace a file
silently, atomic text writes, the voxel size of a layer.

widget -> :func:`choose_output_path` (save dialog, then our own "Replace?" question) -> the widget
writes (e.g. :func:`write_text_atomic`); :func:`check_not_source` refuses a destination that is a
volume's own file (same path, symlink, hard link, or inside its zarr store);
:func:`choose_input_file` / :func:`choose_folder` for inputs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from napari_tomoseg._napari.files import source_path
from napari_tomoseg._napari.writer import voxel_size_um
from napari_tomoseg.core.io import check_not_input

__all__ = [
    "check_not_source",
    "choose_folder",
    "choose_input_file",
    "choose_output_path",
    "confirm_overwrite",
    "layer_voxel_size",
    "write_text_atomic",
]


def layer_voxel_size(layer: Any) -> tuple[float, float, float] | None:
    """The voxel size ``(z, y, x)`` in µm of a 3D layer, or None if unknown (see
    :func:`~napari_tomoseg._napari.writer.voxel_size_um`)."""
    return voxel_size_um(getattr(layer, "scale", ()), getattr(layer, "units", None))


def check_not_source(path: Path, layers: Sequence[Any]) -> None:
    """Refuse to write ``path`` if it is the file a layer was read from.

    Every image layer's file counts (a volume is never written over), and so does the file of any
    other layer whose data is read lazily from it (writing would pull the data from under it).

    Raises
    ------
    ValueError
        Naming the destination and the layer whose file it is.
    """
    from napari.layers import Image

    for layer in layers:
        src = source_path(layer)
        if src is None:
            continue
        lazy = not isinstance(getattr(layer, "data", None), np.ndarray)
        if not isinstance(layer, Image) and not lazy:
            continue
        try:  # same path, symlink, hard link, inside the volume's folder (the core's check)
            check_not_input(path, [src])
        except ValueError as err:
            raise ValueError(
                f"{path} is the file of layer {layer.name!r} ({src}); it is never written over, "
                "choose another file"
            ) from err


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: a failed write leaves no half file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def choose_output_path(
    parent: QWidget | None, caption: str, suggested: str, file_filter: str
) -> Path | None:
    """Ask for an output file; if it exists, ask again before it may be replaced.

    Returns None when the user cancels either dialog. The native dialog's own overwrite question
    is switched off so that the question is always ours (and testable).
    """
    name, _ = QFileDialog.getSaveFileName(
        parent,
        caption,
        suggested,
        file_filter,
        options=QFileDialog.Option.DontConfirmOverwrite,
    )
    if not name:
        return None
    path = Path(name)
    if path.exists() and not confirm_overwrite(parent, path):
        return None
    return path


def confirm_overwrite(parent: QWidget | None, paths: Path | Sequence[Path]) -> bool:
    """Ask whether the existing file(s) ``paths`` may be replaced (default: no)."""
    items = [paths] if isinstance(paths, Path) else list(paths)
    what = (
        f"{items[0]} exists"
        if len(items) == 1
        else "These files exist: " + ", ".join(map(str, items))
    )
    answer = QMessageBox.question(
        parent,
        "Replace file?",
        f"{what}. Replace {'it' if len(items) == 1 else 'them'}?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def choose_input_file(parent: QWidget | None, caption: str, file_filter: str) -> Path | None:
    """Ask for an existing file; None when cancelled."""
    name, _ = QFileDialog.getOpenFileName(parent, caption, "", file_filter)
    return Path(name) if name else None


def choose_folder(parent: QWidget | None, caption: str) -> Path | None:
    """Ask for an existing folder; None when cancelled."""
    name = QFileDialog.getExistingDirectory(parent, caption)
    return Path(name) if name else None
