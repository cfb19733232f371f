"""Files that belong to a volume or to the user: autosaved annotations, on-disk predictions, settings.

image layer -> :func:`source_path` (the file it came from) -> :func:`companion_path` (``<volume><suffix>``
next to it, or in :func:`autosave_dir`); :func:`recent_models` / :func:`remember_model` in :func:`config_dir`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "autosave_dir",
    "companion_path",
    "config_dir",
    "recent_models",
    "remember_model",
    "source_path",
]


def autosave_dir() -> Path:
    """Where files of volumes without a file (samples, pasted arrays) are saved
    (``NAPARI_TOMOSEG_AUTOSAVE_DIR`` overrides it)."""
    env = os.environ.get("NAPARI_TOMOSEG_AUTOSAVE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-tomoseg")) / "autosave"


def source_path(layer: Any) -> Path | None:
    """The file or folder an image layer was opened from, if any."""
    p = layer.metadata.get("source_path") or getattr(layer.source, "path", None)
    return Path(p) if p else None


def companion_path(image: Any, suffix: str, folder: Path | None = None) -> Path:
    """``<volume file><suffix>`` next to the file ``image`` was opened from (or in ``folder``, or in
    :func:`autosave_dir` when that folder is read-only or the volume has no file; then the layer name
    and shape make the name)."""
    src = source_path(image)
    if src is not None:
        name = src.name + suffix
        if folder is not None:
            return folder / name
        if os.access(src.parent, os.W_OK):
            return src.parent / name
        return autosave_dir() / name
    data = image.data[0] if getattr(image, "multiscale", False) else image.data
    shape = "x".join(str(int(s)) for s in data.shape)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", image.name) or "volume"
    return (folder or autosave_dir()) / f"{safe}-{shape}{suffix}"


def config_dir() -> Path:
    """Where napari-tomoseg keeps user settings (``NAPARI_TOMOSEG_CONFIG_DIR`` overrides it)."""
    env = os.environ.get("NAPARI_TOMOSEG_CONFIG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("napari-tomoseg"))


def recent_models(limit: int = 8) -> list[Path]:
    """Model files used or saved recently that still exist, newest first."""
    f = config_dir() / "recent_models.json"
    try:
        items = json.loads(f.read_text())
    except (OSError, ValueError):
        return []
    paths = [Path(p) for p in items if isinstance(p, str)] if isinstance(items, list) else []
    return [p for p in paths if p.is_file()][:limit]


def remember_model(path: str | os.PathLike[str]) -> None:
    """Put ``path`` first in the recent-models list (best effort: a read-only home is not an error)."""
    p = str(Path(path).resolve())
    items = [str(x) for x in recent_models(limit=20) if str(x) != p]
    d = config_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".recent_models.json.{os.getpid()}"
        tmp.write_text(json.dumps([p, *items][:20]))
        os.replace(tmp, d / "recent_models.json")
    except OSError as err:
        log.warning("could not remember model %s: %s", p, err)
