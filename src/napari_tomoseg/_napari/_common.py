"""Shared plumbing of the dock widgets: jobs in thread workers, layer pickers, phase <-> layer helpers.

widget -> :class:`JobRunner` (core generator in a napari thread worker, progress bar, Stop, state)
-> ``on_yield`` / ``on_return`` handlers on the Qt thread (the only place layers are touched).
:class:`Session` holds per-viewer state the widgets share (phase table, models in memory).

Nothing here imports torch: widgets import torch-using core modules inside the job functions, which
run in the worker thread.
"""

from __future__ import annotations

import enum
import gc
import importlib
import json
import logging
import os
import re
import sys
import threading
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_error, show_info, show_warning
from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QWidget

from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable
from napari_tomoseg.core.progress import Cancelled, CancelToken

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

log = logging.getLogger(__name__)

__all__ = [
    "JobControls",
    "JobRunner",
    "JobState",
    "LayerCombo",
    "Session",
    "apply_phases",
    "current_slice",
    "labels_colormap",
    "notify_error",
    "notify_info",
    "notify_warning",
    "session",
]


# --------------------------------------------------------------------------------------------------
# notifications


def notify_error(message: str) -> None:
    """Show ``message`` as a napari error notification (and log it)."""
    log.error(message)
    show_error(message)


def notify_warning(message: str) -> None:
    log.warning(message)
    show_warning(message)


def notify_info(message: str) -> None:
    log.info(message)
    show_info(message)


def describe_error(err: BaseException) -> str:
    """A one-line, user-facing description of an exception from the core."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, PermissionError)):
        return text
    return f"{type(err).__name__}: {text}"


# --------------------------------------------------------------------------------------------------
# jobs


_QT_INT_MAX = 2**31 - 1


class JobState(enum.Enum):
    """Where a widget's job stands. Only IDLE/DONE/STOPPED/FAILED accept a new start."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


class _TokenWorker(GeneratorWorker):
    """A generator worker whose ``quit`` (napari calls it when the window closes) also cancels the
    core operation, so a long block of computation stops at its next check instead of running on."""

    cancel_token: CancelToken

    def quit(self) -> None:
        token = getattr(self, "cancel_token", None)
        if token is not None:
            token.cancel()
        super().quit()


class _Stopped:
    """Returned by the relay when the core operation raised :class:`Cancelled`."""


class _JobFailed(Exception):
    """Carries a RuntimeError out of the worker: superqt takes a RuntimeError returned by a worker
    for a deleted Qt object and swallows it (no ``errored``, no ``finished``), but torch reports real
    failures (CUDA out of memory, ...) as RuntimeError."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


#: Niceness added to worker threads (Linux): on a busy CPU the Qt thread is served first.
WORKER_NICENESS = 5


def _lower_thread_priority() -> None:
    """Make the calling (worker) thread yield the CPU to the Qt thread when both want it.

    Linux applies ``setpriority`` to a single thread when given its thread id; elsewhere (or without
    permission) this is a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + WORKER_NICENESS))
    except (OSError, AttributeError):
        pass


#: Modules a first job (or napari's first labels layer) would otherwise import on the Qt thread:
#: torch takes about a second, pandas (napari imports it for a layer's features table) 0.4 s, zarr
#: and scikit-image (napari imports it for the first labels layer) 0.1-0.2 s each.
WARM_UP_MODULES = (
    "pandas",
    "skimage.color",  # napari, for the first labels layer
    "skimage.exposure",
    "napari_tomoseg.core.io.labelstore",  # and zarr
    "torch",
    "napari_tomoseg.core.segment",
    "napari_tomoseg.core.learn.finetune",
    "napari_tomoseg.core.measure.uncertainty",
)
_warm_up_thread: threading.Thread | None = None


def warm_up() -> None:
    """Import :data:`WARM_UP_MODULES` in a background thread, once per process (widgets call this
    when they are created, so that clicking Run does not freeze the viewer while modules load).

    Importing napari_tomoseg (what napari does when it reads the manifest) still imports no torch:
    only creating a widget starts this."""
    global _warm_up_thread
    if _warm_up_thread is not None:
        return

    def run() -> None:
        _lower_thread_priority()
        for name in WARM_UP_MODULES:
            try:
                importlib.import_module(name)
            except Exception as err:  # the job that needs it will report the problem
                log.debug("warm-up import of %s failed: %s", name, err)

    _warm_up_thread = threading.Thread(target=run, name="tomoseg-warm-up")
    _warm_up_thread.start()


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of the garbage collector's sight (``gc.freeze``).

    napari, Qt and torch hold about half a million container objects; a full collection walks them
    all and holds the GIL for about 0.2 s, freezing the viewer mid-job. They live as long as the
    viewer, so after this each collection only walks what was created since. Called when a job
    delivers its first event (torch and the model are loaded by then)."""
    gc.freeze()


def _relay(make: Callable[[CancelToken], Generator[Any, None, Any]], token: CancelToken) -> Any:
    """Worker-thread body: build the core generator (imports torch, loads models...) and relay it."""
    _lower_thread_priority()
    try:
        gen = make(token)
        result = yield from gen
    except Cancelled:
        return _Stopped()
    except RuntimeError as err:
        raise _JobFailed(err) from err
    return result


class JobRunner:
    """Runs one core generator at a time in a napari thread worker.

    The generator is *built* in the worker thread by ``make(token)`` (so model loading and torch
    imports never block the Qt thread). Each yielded event reaches ``on_yield`` and the result
    reaches ``on_return``, both on the Qt thread. A core operation that raises
    :class:`~napari_tomoseg.core.progress.Cancelled` ends in state STOPPED (``on_stopped``); an
    operation that returns normally after a cancel (e.g. fine-tuning keeping its best weights)
    reaches ``on_return`` and ends STOPPED. Any other exception ends FAILED with a napari error
    notification (``on_error`` first, e.g. to restore layers).

    Parameters
    ----------
    name
        What the job does, in the user's words ("Segmenting", "Fine-tuning"); used in the progress
        bar and in messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = JobState.IDLE
        self.worker: _TokenWorker | None = None
        self.token: CancelToken | None = None
        self.error: BaseException | None = None
        self._pbar: progress | None = None
        #: True once the current worker has emitted ``finished`` (its thread is done).
        self.worker_finished = True
        self._listeners: list[Callable[[JobState], None]] = []
        warm_up()  # a widget with a job to run was made: load what its first run needs

    # state -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state is JobState.RUNNING

    def on_state(self, callback: Callable[[JobState], None]) -> None:
        """Call ``callback(state)`` on every state change (Qt thread)."""
        self._listeners.append(callback)

    def _set_state(self, state: JobState) -> None:
        self.state = state
        for cb in list(self._listeners):
            cb(state)

    # control ---------------------------------------------------------------------------------
    def start(
        self,
        make: Callable[[CancelToken], Generator[Any, None, Any]],
        *,
        on_yield: Callable[[Any], None] | None = None,
        on_return: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        total: int | None = None,
        describe: Callable[[Any], tuple[int | None, str]] | None = None,
    ) -> _TokenWorker:
        """Start ``make(token)`` in a worker; refuse (RuntimeError) while a job runs.

        ``describe(event) -> (progress value or None, text)`` drives the progress bar.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running; stop it first")
        token = CancelToken()
        worker = create_worker(_relay, make, token, _worker_class=_TokenWorker, _ignore_errors=True)
        assert isinstance(worker, _TokenWorker)
        worker.cancel_token = token
        self.worker, self.token, self.error = worker, token, None
        # Qt progress bars hold 32-bit ints: count in coarser steps beyond (a 2048^3 volume
        # has 8.6e9 voxels).
        step = max(1, -(-(total or 0) // _QT_INT_MAX))
        pbar = progress(total=(total or 0) // step, desc=self.name)
        self._pbar = pbar

        first = [True]

        def yielded(event: Any) -> None:
            if first[0]:
                first[0] = False
                freeze_long_lived_objects()
            if describe is not None:
                value, text = describe(event)
                if value is not None and pbar.total:
                    pbar.n = min(int(value) // step, int(pbar.total))
                    pbar.refresh()
                if text:
                    pbar.set_description(f"{self.name}: {text}")
            if on_yield is not None:
                on_yield(event)

        def returned(result: Any) -> None:
            if isinstance(result, _Stopped):
                self._set_state(JobState.STOPPED)
                if on_stopped is not None:
                    on_stopped()
                return
            stopped = token.cancelled
            if on_return is not None:
                try:
                    on_return(result)
                except (
                    Exception
                ) as err:  # a bug or bad state in our handler: report, do not crash Qt
                    log.exception("%s: handling the result failed", self.name)
                    self._fail(err, on_error)
                    return
            self._set_state(JobState.STOPPED if stopped else JobState.DONE)

        def errored(err: BaseException) -> None:
            self._fail(err.original if isinstance(err, _JobFailed) else err, on_error)

        def aborted() -> None:  # window closed: quit() stopped the generator between events
            self._set_state(JobState.STOPPED)

        def finished() -> None:
            self.worker_finished = True
            pbar.close()
            if self._pbar is pbar:
                self._pbar = None
            if self.state is JobState.RUNNING:  # aborted without a result
                self._set_state(JobState.STOPPED)

        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        self.worker_finished = False
        self._set_state(JobState.RUNNING)
        worker.start()
        return worker

    def _fail(self, err: BaseException, on_error: Callable[[BaseException], None] | None) -> None:
        self.error = err
        if on_error is not None:
            try:
                on_error(err)
            except Exception:
                log.exception("%s: restoring after a failure failed", self.name)
        self._set_state(JobState.FAILED)
        log.error("%s failed", self.name, exc_info=(type(err), err, err.__traceback__))
        notify_error(f"{self.name} failed: {describe_error(err)}")

    def stop(self) -> None:
        """Ask the running job to stop at its next check (the core keeps what it promises, e.g. the
        best weights of a fine-tuning run)."""
        if self.token is not None and self.running:
            self.token.cancel()

    def quit(self) -> None:
        """Stop and abandon the job (widget closing): no result handlers run after this."""
        if self.worker is not None and self.running:
            self.worker.quit()


class JobControls(QWidget):
    """A Run button, a Stop button and a status line, bound to a :class:`JobRunner`.

    Run is disabled while the job runs (and whenever ``can_run`` says so); Stop only while it runs.
    """

    def __init__(self, runner: JobRunner, run_text: str = "Run", parent: QWidget | None = None):
        super().__init__(parent)
        self.runner = runner
        self.run_button = QPushButton(run_text)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("Stop at the next step; nothing half-written is kept")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.run_button)
        row.addWidget(self.stop_button)
        self.stop_button.clicked.connect(runner.stop)
        runner.on_state(self._update)
        self._extra_buttons: list[QPushButton] = []

    def also_disable(self, *buttons: QPushButton) -> None:
        """Buttons that must be disabled while the job runs (e.g. Preview next to Run)."""
        self._extra_buttons.extend(buttons)

    def _update(self, state: JobState) -> None:
        running = state is JobState.RUNNING
        self.run_button.setEnabled(not running)
        for b in self._extra_buttons:
            b.setEnabled(not running)
        self.stop_button.setEnabled(running)


# --------------------------------------------------------------------------------------------------
# layers


def _layer_is(layer: Layer, kind: str) -> bool:
    return layer._type_string == kind  # 'image', 'labels', ...


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers of one kind (``"image"`` or ``"labels"``), kept current.

    Parameters
    ----------
    viewer
        The napari viewer.
    kind
        ``"image"`` or ``"labels"``.
    optional
        Add a first entry "(none)" meaning no layer.
    accept
        Extra filter on layers (e.g. only 3D images).
    """

    NONE = "(none)"

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        kind: str,
        *,
        optional: bool = False,
        accept: Callable[[Layer], bool] | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._kind = kind
        self._optional = optional
        self._accept = accept
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.moved.connect(self.refresh)
        self._watched: list[Layer] = []
        self.refresh()

    def _layers(self) -> list[Layer]:
        return [
            ly
            for ly in self._viewer.layers
            if _layer_is(ly, self._kind) and (self._accept is None or self._accept(ly))
        ]

    def refresh(self, event: Any = None) -> None:
        try:
            current = self.currentText()
        except RuntimeError:  # the Qt widget was deleted (dock closed): stop listening
            for ev in (
                self._viewer.layers.events.inserted,
                self._viewer.layers.events.removed,
                self._viewer.layers.events.moved,
            ):
                ev.disconnect(self.refresh)
            return
        for ly in self._watched:
            ly.events.name.disconnect(self.refresh)
        self._watched = self._layers()
        for ly in self._watched:
            ly.events.name.connect(self.refresh)
        names = ([self.NONE] if self._optional else []) + [ly.name for ly in self._watched]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def layer(self) -> Layer | None:
        """The chosen layer, or None."""
        name = self.currentText()
        if not name or name == self.NONE or name not in self._viewer.layers:
            return None
        return self._viewer.layers[name]

    def set_layer(self, name: str) -> None:
        self.setCurrentText(name)


def check_image_layer(layer: Layer | None) -> Any:
    """The data of a usable 3D grey image layer, or a ValueError that says what to do."""
    if layer is None:
        raise ValueError("no image layer: open a volume first (File > Open, or File > Open Sample)")
    if getattr(layer, "rgb", False):
        raise ValueError(
            f"layer {layer.name!r} is an RGB image; segmentation needs a grey-value volume "
            "(convert it to greyscale first)"
        )
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    if data.ndim != 3:
        raise ValueError(
            f"layer {layer.name!r} has {data.ndim} dimensions (shape {tuple(data.shape)}); "
            "segmentation needs a 3D volume (z, y, x)"
        )
    return data


def labels_colormap(phases: PhaseTable) -> DirectLabelColormap:
    """Phase colours for a labels layer; 0 (and any id outside the table) transparent."""
    colours: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
    colours.update(phases.colour_dict())
    return DirectLabelColormap(color_dict=colours)


def phase_features(phases: PhaseTable) -> dict[str, list[Any]]:
    """A labels layer's ``features`` table: one row per id (0 = none), with the phase names."""
    return {"index": [0, *phases.ids], "phase": ["none", *phases.names]}


def apply_phases(layer: Any, phases: PhaseTable) -> None:
    """Give a labels layer the phase names (``features``, shown in the status bar) and colours."""
    layer.colormap = labels_colormap(phases)
    layer.features = phase_features(phases)
    layer.metadata["tomoseg_phases"] = phases.to_json()


def layer_phases(layer: Any) -> PhaseTable | None:
    """The phase table a layer was bound to by :func:`apply_phases`, if any."""
    raw = getattr(layer, "metadata", {}).get("tomoseg_phases")
    return PhaseTable.from_json(raw) if raw else None


def current_slice(viewer: napari.viewer.Viewer, axis: int | None = None) -> tuple[int, int]:
    """``(axis, index)`` of the slice shown in a 2D view (the first non-displayed axis by default)."""
    if axis is None:
        hidden = list(viewer.dims.not_displayed)
        axis = hidden[0] if hidden else 0
    return axis, int(viewer.dims.current_step[axis])


def geometry(like: Layer | None) -> dict[str, Any]:
    """``scale``, ``translate`` and ``units`` of ``like``, for a layer drawn over it ({} for None)."""
    if like is None:
        return {}
    return {"scale": like.scale, "translate": like.translate, "units": like.units}


def voxel_size(layer: Layer) -> tuple[float, float, float] | None:
    """The voxel size (µm) of a layer, from its ``scale``; None when napari's default (1, 1, 1)."""
    scale = tuple(float(s) for s in layer.scale)
    return scale if scale != (1.0, 1.0, 1.0) else None  # type: ignore[return-value]


def upsert_labels(
    viewer: napari.viewer.Viewer,
    name: str,
    data: Any,
    *,
    like: Layer | None,
    phases: PhaseTable | None = None,
    **kwargs: Any,
) -> Any:
    """Replace the data of the labels layer ``name`` (or add it), with ``like``'s scale/translate."""
    where = geometry(like)
    if name in viewer.layers and _layer_is(viewer.layers[name], "labels"):
        layer = viewer.layers[name]
        layer.data = data
        for k, v in where.items():
            setattr(layer, k, v)
    else:
        layer = viewer.add_labels(data, name=name, **where, **kwargs)
    if phases is not None:
        apply_phases(layer, phases)
    return layer


# --------------------------------------------------------------------------------------------------
# files that belong to a volume: autosaved annotations, on-disk prediction and uncertainty


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


# --------------------------------------------------------------------------------------------------
# per-viewer session state


@dataclass
class Session:
    """State the widgets of one viewer share.

    ``phases``: the phase table of the annotations (default: the bundled model's).
    ``models``: models in memory by display name (e.g. a fine-tuned one not yet saved).
    ``uncertainty``: the last segmentation's per-voxel uncertainty (float16 in memory, or a uint8
    zarr store holding 255 x entropy for a big volume), the per-slice mean uncertainty along each axis
    (``slice_scores``, a :class:`~napari_tomoseg.core.measure.uncertainty.SliceScoreAccumulator`) and the
    name of the image layer they belong to.
    ``widgets``: the dock widgets created for this viewer, by kind ("segment", "annotate", ...).
    """

    phases: PhaseTable = COMPOSITE_PHASES
    models: dict[str, Any] = field(default_factory=dict)
    uncertainty: Any | None = None
    slice_scores: Any | None = None
    uncertainty_image: str | None = None
    widgets: weakref.WeakValueDictionary[str, Any] = field(
        default_factory=weakref.WeakValueDictionary
    )

    def __post_init__(self) -> None:
        self.events = _SessionEvents()

    def set_phases(self, phases: PhaseTable) -> None:
        if phases != self.phases:
            self.phases = phases
            self.events.phases_changed.emit(phases)

    def add_model(self, name: str, model: Any) -> None:
        self.models[name] = model
        self.events.models_changed.emit()


class _SessionEvents:
    phases_changed = Signal(object)
    models_changed = Signal()


_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def session(viewer: napari.viewer.Viewer) -> Session:
    """The :class:`Session` of ``viewer`` (created on first use)."""
    s = _SESSIONS.get(viewer)
    if s is None:
        s = Session()
        _SESSIONS[viewer] = s
    return s


# --------------------------------------------------------------------------------------------------
# user settings: recently used model files


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


def as_array(data: Any) -> np.ndarray:
    """A numpy view/copy of layer data (dask/zarr arrays are computed)."""
    return np.asarray(data)
