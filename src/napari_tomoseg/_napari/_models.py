"""Choosing a model in the widgets: the bundled one, recently used files, models in memory, a file.

:func:`read_model_header` reads a model file's metadata (phases, inference defaults) without torch, so
that a form can show a model's settings before any work starts; :meth:`ModelChooser.load` (called in a
worker thread) loads the network itself.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QComboBox, QFileDialog, QWidget

from napari_tomoseg._napari._common import recent_models, remember_model
from napari_tomoseg.core.phases import PhaseTable

if TYPE_CHECKING:
    from napari_tomoseg._napari._common import Session

BUNDLED = "bundled"
_CHOOSE = "Choose a model file…"


@dataclass(frozen=True)
class ModelInfo:
    """What a form needs to know about a model before loading it."""

    phases: PhaseTable
    mode: str
    axis: str
    tile: int
    overlap: int
    ndim: int
    in_channels: int
    ring_removal: bool = False


def bundled_path() -> Path:
    # core.model imports torch; the path is fixed, so compute it here without importing it.
    return Path(__file__).resolve().parent.parent / "models" / "composite-2d.safetensors"


def read_model_header(path: str | Path) -> ModelInfo:
    """Phases and inference defaults of a ``.safetensors`` model file, read without torch.

    Raises
    ------
    ValueError
        If the file is not a napari-tomoseg model.
    """
    p = Path(path)
    try:
        with open(p, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            meta = json.loads(f.read(n)).get("__metadata__") or {}
        if meta.get("format") != "napari-tomoseg/model/1":
            raise ValueError("no napari-tomoseg metadata")
        unet = json.loads(meta["unet"])
        inference = json.loads(meta.get("inference", "{}"))
        normalization = json.loads(meta.get("normalization", "{}"))
        return ModelInfo(
            phases=PhaseTable.from_json(json.loads(meta["phases"])),
            mode=inference.get("mode", "2d"),
            axis=inference.get("axis", "z"),
            tile=int(inference.get("tile", 256)),
            overlap=int(inference.get("overlap", 32)),
            ndim=int(unet.get("ndim", 2)),
            in_channels=int(unet.get("in_channels", 1)),
            ring_removal=bool(normalization.get("ring_removal", False)),
        )
    except (OSError, ValueError, KeyError, TypeError, struct.error) as err:
        raise ValueError(
            f"{p} is not a napari-tomoseg model file ({err}); choose a .safetensors file saved by "
            "napari-tomoseg (tomoseg train, or Fine-tune > Save model)"
        ) from err


def info_of(model: Any) -> ModelInfo:
    """:class:`ModelInfo` of a loaded :class:`~napari_tomoseg.core.model.TomosegModel`."""
    d = model.defaults
    return ModelInfo(
        model.phases,
        d.mode,
        d.axis,
        d.tile,
        d.overlap,
        model.config.ndim,
        model.config.in_channels,
        model.normalization.ring_removal,
    )


class ModelChooser(QComboBox):
    """Bundled model, models in this session's memory, recent files, or "Choose a model file…".

    Item data is ``"bundled"``, ``"memory:<name>"`` or a file path.
    """

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._session = session
        self._files: list[Path] = []
        self.refresh()
        session.events.models_changed.connect(self.refresh)
        self.activated.connect(self._on_activated)

    def refresh(self) -> None:
        try:
            current = self.currentData()
        except RuntimeError:  # deleted widget
            self._session.events.models_changed.disconnect(self.refresh)
            return
        self.blockSignals(True)
        self.clear()
        self.addItem("Bundled: glass-fibre composite (2D U-Net)", BUNDLED)
        for name in self._session.models:
            self.addItem(f"In memory: {name}", f"memory:{name}")
        seen = set()
        for p in [*self._files, *recent_models()]:
            if str(p) in seen or p == bundled_path():
                continue
            seen.add(str(p))
            self.addItem(f"File: {p.name}", str(p))
            self.setItemData(self.count() - 1, str(p), 3)  # tooltip: the full path
        self.addItem(_CHOOSE, None)
        index = self.findData(current) if current is not None else -1
        self.setCurrentIndex(max(index, 0))
        self.blockSignals(False)
        if self.currentData() != current:
            self.currentIndexChanged.emit(self.currentIndex())

    def _on_activated(self, index: int) -> None:
        if self.itemData(index) is None:
            path, _ = QFileDialog.getOpenFileName(
                self, "Choose a napari-tomoseg model", "", "Model files (*.safetensors)"
            )
            if path:
                self.set_file(path)
            else:
                self.setCurrentIndex(0)

    def set_file(self, path: str | Path) -> None:
        """Add ``path`` (checked: it must be a napari-tomoseg model) and select it."""
        read_model_header(path)
        p = Path(path).resolve()
        if p not in self._files:
            self._files.insert(0, p)
        self.refresh()
        self.setCurrentIndex(self.findData(str(p)))

    def select_memory(self, name: str) -> None:
        self.setCurrentIndex(self.findData(f"memory:{name}"))

    def choice(self) -> str:
        """The current choice's item data; ValueError if none."""
        data = self.currentData()
        if data is None:
            raise ValueError("choose a model first")
        return str(data)

    def info(self) -> ModelInfo:
        """Phases and defaults of the chosen model (no torch for files)."""
        choice = self.choice()
        if choice == BUNDLED:
            return read_model_header(bundled_path())
        if choice.startswith("memory:"):
            return info_of(self._session.models[choice[len("memory:") :]])
        return read_model_header(choice)

    def loader(self) -> Any:
        """A function, to be called in a worker thread, that returns the chosen TomosegModel."""
        choice = self.choice()
        if choice.startswith("memory:"):
            model = self._session.models[choice[len("memory:") :]]
            return lambda: model

        path = bundled_path() if choice == BUNDLED else Path(choice)
        if choice != BUNDLED:
            remember_model(path)

        def load() -> Any:
            from napari_tomoseg.core.model import load_model

            return load_model(path)

        return load
