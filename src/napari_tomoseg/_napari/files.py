"""Files that belong to a volume or to the user: autosaved annotations, on-disk predictions, settings.

image layer -> :func:`source_path` (the file it came from) -> :func:`source_identity` (which volume it
is: the resolved path of its file, or an id kept in the layer's metadata) -> :func:`companion_path`
(``<volume><suffix>`` next to its file, or ``<name>-<key><suffix>`` in :func:`autosave_dir`, one name per
source so two volumes never share a file); :func:`recent_models` / :func:`remember_model` in
:func:`config_dir`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "SOURCE_ID_KEY",
    "SourceIdentity",
    "autosave_dir",
    "companion_path",
    "config_dir",
    "is_same_or_inside",
    "recent_models",
    "remember_model",
    "source_identity",
    "source_path",
    "writable_folder",
]

#: Layer metadata key holding the identity of a volume that has no file (made once per layer).
SOURCE_ID_KEY = "tomoseg_source_id"
# In-memory volumes up to this many bytes are identified by their content (the same array opened
# again, e.g. the sample data, finds its annotations); bigger or lazy ones get a random id.
_HASH_LIMIT_BYTES = 2**31


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


@dataclass(frozen=True)
class SourceIdentity:
    """Which volume an image layer shows.

    Attributes
    ----------
    key
        A file-name-safe name unique to the source: ``<file name>-<hash of the resolved path>`` for a
        file, ``<layer name>-<shape>-<id>`` for a volume without a file.
    path
        The resolved file or folder, or None for a volume without a file.
    description
        For messages: the resolved path, or the layer name and its id.
    """

    key: str
    path: Path | None
    description: str


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "volume"


def _digest(text: str | bytes) -> str:
    raw = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


def _fileless_id(image: Any, data: Any) -> str:
    """The id of a volume without a file, made once and kept in ``image.metadata``."""
    meta = image.metadata
    found = meta.get(SOURCE_ID_KEY)
    if isinstance(found, str) and re.fullmatch(r"[a-z]+-[0-9a-f]{16}", found):
        return found
    if isinstance(data, np.ndarray) and data.nbytes <= _HASH_LIMIT_BYTES:
        # Content, shape and dtype: the same voxels opened again are the same source; any other
        # array (even of the same name and shape) is another one.
        h = hashlib.blake2b(digest_size=8)
        h.update(f"{data.shape}{data.dtype.str}".encode())
        h.update(memoryview(np.ascontiguousarray(data)).cast("B"))
        made = f"data-{h.hexdigest()}"
    else:
        made = f"uuid-{uuid.uuid4().hex[:16]}"
    meta[SOURCE_ID_KEY] = made
    return made


def source_identity(image: Any) -> SourceIdentity:
    """The identity of the volume ``image`` shows (see :class:`SourceIdentity`).

    A volume opened from a file is its resolved path (a symlink and its target are one source; two
    files of the same name in two folders are two). A volume without a file gets an id once, kept in
    the layer's metadata under :data:`SOURCE_ID_KEY`: a digest of its voxels when it is an array in
    memory, a random id otherwise.
    """
    src = source_path(image)
    if src is not None:
        resolved = src.expanduser().resolve()
        return SourceIdentity(
            f"{_safe(resolved.name)}-{_digest(str(resolved))}", resolved, str(resolved)
        )
    data = image.data[0] if getattr(image, "multiscale", False) else image.data
    shape = "x".join(str(int(s)) for s in data.shape)
    ident = _fileless_id(image, data)
    name = str(getattr(image, "name", "volume"))
    return SourceIdentity(
        f"{_safe(name)}-{shape}-{ident.split('-', 1)[1]}",
        None,
        f"layer {name!r} ({shape}, {ident})",
    )


def writable_folder(folder: Path) -> bool:
    """True if files may be created in ``folder`` (an existing, writable folder)."""
    return folder.is_dir() and os.access(folder, os.W_OK)


def companion_path(image: Any, suffix: str, folder: Path | None = None) -> Path:
    """Where a file belonging to the volume ``image`` goes: ``<volume file><suffix>`` next to the
    (resolved) file it was opened from; otherwise ``<key><suffix>`` (see :func:`source_identity`)
    in ``folder`` if given, else in :func:`autosave_dir` (the volume's folder is read-only, or it has
    no file). The name is unique per source, so two volumes never share a companion file.

    Raises
    ------
    ValueError
        If the path would be the volume's own file (never written over).
    """
    ident = source_identity(image)
    if ident.path is not None and folder is None and writable_folder(ident.path.parent):
        path = ident.path.parent / (ident.path.name + suffix)
    else:
        path = (folder or autosave_dir()) / f"{ident.key}{suffix}"
    if ident.path is not None and is_same_or_inside(path, ident.path):
        raise ValueError(
            f"{path} would be the volume's own file {ident.path}; choose another folder"
        )
    return path


def is_same_or_inside(path: Path, source: Path) -> bool:
    """True if ``path`` is ``source`` (the same file through any symlink or hard link) or lies inside
    the folder ``source`` (e.g. a zarr store)."""
    p = path.expanduser().absolute()
    src = source.expanduser().resolve()
    try:
        real = p.resolve()
    except OSError:
        real = p
    if real == src or src in real.parents:
        return True
    try:
        a, b = os.stat(p), os.stat(src)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
