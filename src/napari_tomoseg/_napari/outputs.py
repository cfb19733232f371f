"""Files the dock widgets write or read at the user's request: dialogs that never replace a file
silently, atomic text writes, the voxel size of a layer and the field that shows and sets it.

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
from magicgui.widgets import LineEdit
from qtpy.QtWidgets import QFileDialog, QMessageBox, QWidget

from napari_tomoseg._napari.files import source_path
from napari_tomoseg._napari.writer import voxel_size_um
from napari_tomoseg.core.io import check_not_input

__all__ = [
    "VoxelSizeField",
    "apply_voxel_size",
    "check_not_source",
    "choose_folder",
    "choose_input_file",
    "choose_output_path",
    "confirm_overwrite",
    "format_voxel_size",
    "layer_voxel_size",
    "parse_voxel_size_text",
    "write_text_atomic",
]


def layer_voxel_size(layer: Any) -> tuple[float, float, float] | None:
    """The voxel size ``(z, y, x)`` in µm of a 3D layer, or None if unknown (see
    :func:`~napari_tomoseg._napari.writer.voxel_size_um`)."""
    return voxel_size_um(getattr(layer, "scale", ()), getattr(layer, "units", None))


def format_voxel_size(voxel: Sequence[float] | None) -> str:
    """``"1.3 µm"`` or ``"2, 1.3, 1.3 µm"`` (z, y, x); ``""`` when unknown. Read back by
    :func:`parse_voxel_size_text`."""
    if voxel is None:
        return ""
    values = [f"{float(v):.6g}" for v in voxel]
    return f"{values[0] if len(set(values)) == 1 else ', '.join(values)} µm"


def parse_voxel_size_text(text: str) -> tuple[float, float, float] | None:
    """A voxel size field's text as ``(z, y, x)`` in µm; None when empty (unknown).

    The syntax of ``tomoseg --voxel-size``: one number or three (z, y, x), an optional unit (µm
    when none). A ValueError says what to write.
    """
    from napari_tomoseg.core.measure.units import parse_voxel_size

    text = str(text).strip()
    if not text:
        return None
    try:
        return parse_voxel_size(text)
    except ValueError as err:
        raise ValueError(f"voxel size: {err}") from None


class VoxelSizeField(LineEdit):
    """A text field showing a layer's voxel size, which the user may correct.

    :meth:`follow` shows a layer's voxel size; :meth:`voxel_size` reads the field: the user's text
    (see :func:`parse_voxel_size_text`) when it was edited, else the layer's voxel size as it is
    now (which a segmentation may have set since). Empty means unknown.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"label": "Voxel size", **kwargs})
        self.native.setPlaceholderText("unknown, e.g. 1.3 or 2,1.3,1.3 µm")
        self._shown = ""

    def follow(self, layer: Any) -> None:
        """Show ``layer``'s voxel size (empty when unknown or no layer)."""
        self._shown = format_voxel_size(None if layer is None else layer_voxel_size(layer))
        self.value = self._shown

    def voxel_size(self, layer: Any) -> tuple[float, float, float] | None:
        """``(z, y, x)`` in µm for ``layer``, or None; a ValueError says what to write."""
        text = str(self.value).strip()
        if text == self._shown.strip():
            return None if layer is None else layer_voxel_size(layer)
        return parse_voxel_size_text(text)


def apply_voxel_size(
    viewer: Any, image: Any, voxel: tuple[float, float, float] | None
) -> list[str]:
    """Give ``image`` and every layer drawn over it (the same last three dimensions and the same
    scale) the voxel size ``voxel`` in µm, so that they stay aligned; returns the names changed.

    Nothing changes when ``voxel`` is None or already the image's voxel size.
    """
    if voxel is None:
        return []
    old = layer_voxel_size(image)
    if old is not None and np.allclose(old, voxel, rtol=1e-9, atol=0):
        return []
    shape = tuple(image.data.shape[-3:])
    scale = tuple(float(v) for v in image.scale[-3:])
    changed = []
    for layer in list(viewer.layers):
        data_shape = getattr(layer.data, "shape", None)  # shapes layers hold a list
        if layer.ndim < 3 or data_shape is None or tuple(data_shape[-3:]) != shape:
            continue
        if not np.allclose(tuple(layer.scale[-3:]), scale):
            continue
        keep = layer.ndim - 3
        layer.scale = (*tuple(layer.scale)[:keep], *voxel)
        layer.units = (*tuple(layer.units)[:keep], *(("µm",) * 3))
        changed.append(layer.name)
    return changed


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
