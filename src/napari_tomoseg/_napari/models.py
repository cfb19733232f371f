"""Choosing a model in the widgets: the bundled one, models in memory, recently used files, a file.

model file -> :func:`read_model_header` (phases, inference defaults; no torch) -> :class:`ModelInfo` -> a form
shows the model's settings; :meth:`ModelChooser.loader` returns the function a worker thread calls to load
the network itself.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from magicgui.application import use_app
from magicgui.widgets import ComboBox, Container, PushButton
from psygnal import Signal

from napari_tomoseg._napari.files import recent_models, remember_model
from napari_tomoseg._napari.notify import notify_error
from napari_tomoseg._napari.state import ViewerState
from napari_tomoseg.core.phases import PhaseTable

__all__ = [
    "BUNDLED",
    "MEMORY",
    "ModelChooser",
    "ModelInfo",
    "bundled_path",
    "info_of",
    "read_model_header",
]

#: The chooser's value for the bundled model; models in memory are ``MEMORY + name``; files their path.
BUNDLED = "bundled"
MEMORY = "memory:"
#: The bundled model's file name (``core.model.BUNDLED_MODEL``, repeated: reading it there imports torch).
_BUNDLED_FILE = "composite-2d.safetensors"
_MODEL_FORMAT = "napari-tomoseg/model/1"


@dataclass(frozen=True)
class ModelInfo:
    """What a form needs to know about a model before loading it.

    ``ndim`` and ``in_channels`` make it a ``core.model.modes.NetworkShape``: pass it to
    ``runnable_modes`` to list the modes the model can run.
    """

    phases: PhaseTable
    mode: str
    axis: str
    tile: int
    overlap: int
    ndim: int
    in_channels: int
    ring_removal: bool = False
    tta: bool = False


def bundled_path() -> Path:
    """The bundled model file (computed here: ``core.model.bundled_model_path`` imports torch)."""
    return Path(__file__).resolve().parent.parent / "models" / _BUNDLED_FILE


def read_model_header(path: str | Path) -> ModelInfo:
    """Phases and inference defaults of a ``.safetensors`` model file, read without torch.

    Parameters
    ----------
    path : str or Path
        A model file written by napari-tomoseg.

    Returns
    -------
    ModelInfo

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
        if meta.get("format") != _MODEL_FORMAT:
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
            tta=inference.get("tta", False) is True,
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
        d.tta,
    )


class ModelChooser(Container):
    """A model picker: a magicgui combo box (bundled model, models in memory, recent files) and a
    "Browse…" button for any model file.

    Parameters
    ----------
    state : ViewerState
        The viewer's shared state; its models in memory are listed and followed.
    label : str
        The row's label in the widget's form.

    Notes
    -----
    :attr:`value` is ``"bundled"``, ``"memory:<name>"`` or a file path; :attr:`model_changed` is
    emitted with it whenever the choice changes (also when the list changes under it).
    """

    model_changed = Signal(str)

    def __init__(self, state: ViewerState, *, label: str = "Model") -> None:
        self.state = state
        self._files: list[Path] = []
        self.combo = ComboBox(choices=self._choices, tooltip="The network that segments")
        self.browse = PushButton(text="Browse…", tooltip="Choose a model file (.safetensors)")
        super().__init__(
            widgets=[self.combo, self.browse], layout="horizontal", labels=False, label=label
        )
        self.margins = (0, 0, 0, 0)
        self._last = self.combo.value
        self.combo.changed.connect(self._combo_changed)
        self.browse.changed.connect(self._browse)
        state.models_changed.connect(self._models_changed)

    # choices --------------------------------------------------------------------------------------
    def _choices(self, _widget: Any = None) -> list[tuple[str, str]]:
        items = [("Bundled: glass-fibre composite (2D U-Net)", BUNDLED)]
        items += [(f"In memory: {name}", MEMORY + name) for name in self.state.models]
        seen = {str(bundled_path())}
        for p in [*self._files, *recent_models()]:
            if str(p) not in seen:
                seen.add(str(p))
                items.append((f"File: {p.name}", str(p)))
        return items

    def refresh(self) -> None:
        """Re-list the models, keeping the current choice while it exists."""
        current = self.combo.value
        self.combo.reset_choices()
        values = [v for _, v in self._choices()]
        self.combo.value = current if current in values else BUNDLED
        self._combo_changed(self.combo.value)

    def _models_changed(self) -> None:
        try:
            self.native.isVisible()
        except RuntimeError:  # the widget was closed: stop following the state
            self.state.models_changed.disconnect(self._models_changed)
            return
        self.refresh()

    def _combo_changed(self, value: Any) -> None:
        if value != self._last:
            self._last = value
            self.model_changed.emit(value)

    def _browse(self, *_: Any) -> None:
        show_dialog = use_app().get_obj("show_file_dialog")
        path = show_dialog(
            "r",
            caption="Choose a napari-tomoseg model",
            filter="Model files (*.safetensors)",
            parent=self.native,
        )
        if path:
            try:
                self.set_file(path)
            except ValueError as err:
                notify_error(str(err))

    # choice ---------------------------------------------------------------------------------------
    @property
    def value(self) -> str:
        """``"bundled"``, ``"memory:<name>"`` or a model file's path."""
        return str(self.combo.value)

    def set_file(self, path: str | Path) -> None:
        """Add ``path`` (checked: it must be a napari-tomoseg model; ValueError) and choose it."""
        read_model_header(path)
        p = Path(path).resolve()
        if p in self._files:
            self._files.remove(p)
        self._files.insert(0, p)
        self.combo.reset_choices()
        self.combo.value = str(p)

    def select_memory(self, name: str) -> None:
        """Choose the model held in memory under ``name`` (KeyError if there is none)."""
        if name not in self.state.models:
            raise KeyError(f"no model {name!r} in memory")
        self.combo.reset_choices()
        self.combo.value = MEMORY + name

    def info(self) -> ModelInfo:
        """Phases and defaults of the chosen model (files are read without torch)."""
        choice = self.value
        if choice == BUNDLED:
            return read_model_header(bundled_path())
        if choice.startswith(MEMORY):
            return info_of(self.state.models[choice[len(MEMORY) :]])
        return read_model_header(choice)

    def loader(self) -> Callable[[], Any]:
        """A function, to be called in a worker thread, that returns the chosen TomosegModel."""
        choice = self.value
        if choice.startswith(MEMORY):
            model = self.state.models[choice[len(MEMORY) :]]
            return lambda: model

        path = bundled_path() if choice == BUNDLED else Path(choice)
        if choice != BUNDLED:
            remember_model(path)

        def load() -> Any:
            from napari_tomoseg.core.model import load_model

            return load_model(path)

        return load
