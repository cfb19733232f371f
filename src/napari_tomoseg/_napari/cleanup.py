"""Clean-up dock widget: remove blobs of a phase by area and aspect ratio (ring artifacts, streaks).

labels layer + phase -> core ``iter_find_blobs`` in a worker -> scatter plot of area vs aspect ratio
(log axes) -> selection by thresholds (core ``BlobTable.select``) or lasso -> ``blob selection`` layer
(core ``blob_mask``) -> core ``reassign_blobs`` -> the layer's voxels edited through napari's history
(Ctrl+Z undoes it; so does the Undo button).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton, SpinBox
from qtpy.QtCore import QTimer

from napari_tomoseg._napari.advanced import Advanced
from napari_tomoseg._napari.docking import tabify_docks
from napari_tomoseg._napari.jobs import JobControls, JobRunner
from napari_tomoseg._napari.layers import LayerPicker, geometry, layer_phases
from napari_tomoseg._napari.notify import notify_error, notify_info
from napari_tomoseg._napari.plots import apply_theme, follow_theme, theme_colours
from napari_tomoseg._napari.state import state_for
from napari_tomoseg._napari.tables import counted
from napari_tomoseg.core.model.modes import AXIS_NAMES
from napari_tomoseg.core.phases import PhaseTable

if TYPE_CHECKING:
    import napari

    from napari_tomoseg.core.measure.blobs import BlobTable

log = logging.getLogger(__name__)

__all__ = ["SELECTION_LAYER", "BlobScatter", "CleanupWidget"]

SELECTION_LAYER = "blob selection"
_SELECTION_COLOUR = "#ff00ff"
_SURROUNDING = "(surrounding phase)"
_SELECTED = (1.0, 0.0, 1.0, 1.0)
_UNSELECTED = (0.3, 0.45, 0.7, 0.6)
TITLE = "Remove blobs of a phase by area and aspect ratio"
HELP = (
    "A blob is a connected patch of one phase in one slice. Analyse plots every blob's area "
    "against its aspect ratio; the blobs at least as large and as elongated as the thresholds "
    "below (or drawn around in the plot) are selected, shown in magenta, and Reassign gives them "
    "the phase that surrounds them most (or the phase you choose). Ring artifacts and streaks are "
    "large, elongated blobs; real pores are small and round."
)


class BlobScatter(Container):
    """Blobs as points of (area, aspect ratio) on log axes (a matplotlib canvas); a lasso hands its
    polygon, in data coordinates, to ``on_lasso``."""

    def __init__(
        self, on_lasso: Callable[[npt.NDArray[np.float64]], None], viewer: Any = None
    ) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(labels=False)
        self.viewer = viewer
        self.margins = (0, 0, 0, 0)
        self.figure = Figure(figsize=(4, 3), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.native.layout().addWidget(self.canvas)
        self.ax = self.figure.add_subplot(111)
        self.points: Any = None
        self._on_lasso = on_lasso
        self._lasso: Any = None
        self.restyle()
        follow_theme(self.canvas, self.restyle, viewer)

    def restyle(self) -> None:
        """Recolour the plot in napari's current theme."""
        apply_theme(self.figure, theme_colours(self.viewer))
        self.canvas.draw_idle()

    def plot(self, blobs: BlobTable, title: str) -> None:
        """One point per blob."""
        ax = self.ax
        ax.clear()
        self.points = None
        if len(blobs):
            from matplotlib.ticker import FuncFormatter
            from matplotlib.widgets import LassoSelector

            self.points = ax.scatter(blobs.area, blobs.aspect_ratio, s=8, picker=False)
            ax.set_xscale("log")
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _pos: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
            ax.xaxis.set_major_formatter(plain)
            self._lasso = LassoSelector(
                ax, lambda verts: self._on_lasso(np.asarray(verts, dtype=np.float64))
            )
        ax.set_xlabel("area (pixels)")
        ax.set_ylabel("aspect ratio (major / minor axis)")
        ax.set_title(title, fontsize="small")
        self.restyle()

    def inside(self, vertices: npt.NDArray[np.float64], blobs: BlobTable) -> npt.NDArray[np.bool_]:
        """Which blobs lie inside the polygon ``vertices`` (data coordinates)."""
        from matplotlib.path import Path as MplPath

        # Compared on screen: on log axes a straight lasso edge is straight on screen, not in data.
        to_display = self.ax.transData.transform
        pts = np.column_stack([blobs.area, blobs.aspect_ratio]).astype(np.float64)
        return np.asarray(MplPath(to_display(vertices)).contains_points(to_display(pts)))

    def highlight(self, selected: npt.NDArray[np.bool_]) -> None:
        """Colour the selected points."""
        if self.points is not None:
            self.points.set_facecolors(np.where(selected[:, None], [_SELECTED], [_UNSELECTED]))
        self.canvas.draw_idle()


class CleanupWidget(Container):
    """Remove blobs of a phase by area and aspect ratio: select the large, elongated ones (ring
    artifacts, streaks), slice by slice, and give them the surrounding (or a chosen) phase."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.runner = JobRunner("Finding blobs")
        self.blobs: BlobTable | None = None
        self.selection: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._analysed: tuple[Any, Any] | None = None  # (layer, data) the blobs belong to
        self._last_edit: tuple[Any, tuple[np.ndarray, ...], np.ndarray, np.ndarray] | None = None

        self.labels_layer = LayerPicker(
            napari_viewer,
            "labels",
            label="Labels",
            prefer=("prediction", "annotations"),
            avoid=("ground truth",),
            accept=lambda ly: ly.name not in (SELECTION_LAYER, "errors"),
        )
        self.phase = ComboBox(label="Phase", choices=[])
        self.phase.tooltip = "The phase whose blobs are analysed (e.g. pores)"
        self.axis = ComboBox(label="Slices along", choices=list(AXIS_NAMES), value="z")
        self.axis.tooltip = "Blobs are found in the slices across this axis (z: the usual slices)"
        self.title = Label(value=f"<b>{TITLE}</b>")
        self.help = Label(value=HELP)
        self.help.native.setWordWrap(True)
        self.controls = JobControls(self.runner, "Analyse")
        self.scatter = BlobScatter(self.select_polygon, napari_viewer)
        self.min_area = SpinBox(label="Min. area (px)", min=0, max=10**9, value=50)
        self.min_area.tooltip = "Select blobs of at least this many pixels in their slice"
        self.min_aspect = FloatSpinBox(
            label="Min. aspect ratio", min=1.0, max=1e4, step=0.5, value=4.0
        )
        self.min_aspect.tooltip = (
            "Select blobs at least this elongated: length over width of the blob's equivalent "
            "ellipse (1 = round)"
        )
        self.to = ComboBox(label="Reassign to", choices=[_SURROUNDING])
        self.to.tooltip = (
            "The phase the selected blobs become; 'surrounding phase': the phase most frequent on "
            "each blob's border in its slice"
        )
        self.reassign_button = PushButton(text="Reassign selected blobs", enabled=False)
        self.undo_button = PushButton(text="Undo", enabled=False)
        self.controls.also_disable(self.reassign_button)
        self.summary = Label(value="Analyse a labels layer to see its blobs.")
        self.summary.native.setWordWrap(True)

        form = Container(widgets=[self.labels_layer, self.phase])
        form.margins = (0, 0, 0, 0)
        threshold_widgets: list[Any] = [self.min_area, self.min_aspect, self.to]
        thresholds = Container(widgets=threshold_widgets)
        thresholds.margins = (0, 0, 0, 0)
        buttons = Container(
            widgets=[self.reassign_button, self.undo_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        self.advanced = Advanced([Container(widgets=[self.axis])])
        super().__init__(
            widgets=[
                self.title,
                self.help,
                form,
                self.advanced,
                self.controls,
                self.scatter,
                thresholds,
                buttons,
                self.summary,
            ],
            labels=False,
        )
        tabify_docks(self)

        self._watched: Any = None  # the layer whose phase table the phase lists follow
        self.labels_layer.changed.connect(self._layer_changed)
        self.controls.run_button.changed.connect(self._analyse_clicked)
        self.min_area.changed.connect(self._select_by_thresholds)
        self.min_aspect.changed.connect(self._select_by_thresholds)
        self.reassign_button.changed.connect(self._reassign_clicked)
        self.undo_button.changed.connect(self._undo_clicked)
        self._layer_changed()

    # ----------------------------------------------------------------------------------------
    def phases(self) -> PhaseTable:
        """The phase table of the chosen layer (or the viewer's)."""
        layer = self.labels_layer.layer
        return (layer_phases(layer) if layer is not None else None) or self.state.phases

    def _layer_changed(self, *_: Any) -> None:
        """Follow the chosen layer's phase table: now, and when it is given one (napari-tomoseg
        sets a layer's features, then its phase table; the lists are refilled once both are set)."""
        if self._watched is not None:
            self._watched.events.features.disconnect(self._phases_later)
        self._watched = self.labels_layer.layer
        if self._watched is not None:
            self._watched.events.features.connect(self._phases_later)
        self._fill_phases()
        self._phases_later()

    def _phases_later(self, *_: Any) -> None:
        QTimer.singleShot(0, self._fill_phases)

    def reset_choices(self, *args: Any) -> None:
        """napari resets every choice list when a layer is added or removed; the phase lists come
        from the chosen layer's phase table, so fill them again, keeping the user's choice."""
        phase, to = self.phase.value, self.to.value
        super().reset_choices(*args)
        self._fill_phases()
        if phase in self.phase.choices:
            self.phase.value = phase
        if to in self.to.choices:
            self.to.value = to

    def _fill_phases(self, *_: Any) -> None:
        try:
            self.native.isVisible()
        except RuntimeError:  # the dock was closed
            return
        phases = self.phases()
        current, current_to = self.phase.value, self.to.value
        self.phase.choices = list(phases.names)
        self.to.choices = [_SURROUNDING, *phases.names]
        pore = next((n for n in phases.names if n.lower() in ("pore", "pores", "porosity")), None)
        self.phase.value = current if current in phases.names else (pore or phases.names[-1])
        if current_to in (_SURROUNDING, *phases.names):
            self.to.value = current_to

    def _analyse_clicked(self) -> None:
        self.analyse()

    def analyse(self) -> bool:
        """Find the blobs of the chosen phase in a worker."""
        layer = self.labels_layer.layer
        if layer is None:
            notify_error("no labels layer: segment the volume or open labels first")
            return False
        data = layer.data
        if data.ndim != 3:
            notify_error(
                f"layer {layer.name!r} has shape {tuple(data.shape)}; a 3D label volume is needed"
            )
            return False
        phase = self.phases().id_of(self.phase.value)
        axis = AXIS_NAMES.index(self.axis.value)
        self.controls.status.value = "Finding blobs…"

        def make(token: Any) -> Any:
            from napari_tomoseg.core.measure.blobs import iter_find_blobs

            return iter_find_blobs(data, phase, axis=axis, cancel=token)

        self.runner.start(
            make,
            on_return=lambda table: self._show(layer, data, table),
            on_error=lambda err: setattr(self.controls.status, "value", f"Analysis failed: {err}"),
            on_stopped=lambda: setattr(self.controls.status, "value", "Analysis stopped."),
            total=int(data.shape[axis]),
            describe=lambda e: (e.done, f"{e.done}/{e.total} slices"),
        )
        return True

    def _show(self, layer: Any, data: Any, table: BlobTable) -> None:
        self.blobs = table
        self._analysed = (layer, data)
        self.scatter.plot(table, f"{counted(len(table), 'blob')} of {self.phase.value}")
        self.controls.status.value = f"{counted(len(table), 'blob')} found."
        self._select_by_thresholds()

    # selection -------------------------------------------------------------------------------
    def _select_by_thresholds(self, *_: Any) -> None:
        if self.blobs is None:
            return
        self.set_selection(
            self.blobs.select(min_area=self.min_area.value, min_aspect=self.min_aspect.value)
        )

    def select_polygon(self, vertices: npt.NDArray[np.float64]) -> None:
        """Select the blobs inside a polygon drawn on the plot (data coordinates: area, aspect)."""
        if self.blobs is None or len(vertices) < 3:
            return
        self.set_selection(self.scatter.inside(vertices, self.blobs))

    def set_selection(self, selection: npt.NDArray[np.bool_]) -> None:
        """Select these blobs (one bool per blob): plot colours, the highlight layer, the summary."""
        assert self.blobs is not None
        self.selection = np.asarray(selection, dtype=bool)
        self.scatter.highlight(self.selection)
        n, vox = int(self.selection.sum()), int(self.blobs.area[self.selection].sum())
        self.summary.value = (
            f"{n:,} of {counted(len(self.blobs), 'blob')} selected ({counted(vox, 'voxel')})."
        )
        self.reassign_button.enabled = n > 0 and not self.runner.running
        self._highlight()

    def _highlight(self) -> None:
        if self._analysed is None or self.blobs is None:
            return
        layer, data = self._analysed
        from napari.utils.colormaps import DirectLabelColormap

        from napari_tomoseg.core.measure.blobs import blob_mask

        try:
            mask = blob_mask(data, self.blobs, self.selection)
        except ValueError as err:  # the labels were edited since: ask for a new analysis
            self._stale(str(err))
            return
        if SELECTION_LAYER in self.viewer.layers:
            sel = self.viewer.layers[SELECTION_LAYER]
            sel.data = mask
        else:
            sel = self.viewer.add_labels(mask, name=SELECTION_LAYER, **geometry(layer), opacity=0.9)
        sel.colormap = DirectLabelColormap(
            color_dict={None: "transparent", 0: "transparent", 1: _SELECTION_COLOUR}
        )

    def _stale(self, message: str) -> None:
        self.blobs = None
        self._analysed = None
        self.selection = np.zeros(0, dtype=bool)
        self.reassign_button.enabled = False
        self.summary.value = "The labels changed since the analysis: analyse again."
        notify_error(message)

    # editing ---------------------------------------------------------------------------------
    def _reassign_clicked(self) -> None:
        self.reassign()

    def reassign(self) -> None:
        """Give the selected blobs the chosen phase, as one undoable edit of the layer."""
        if self.blobs is None or self._analysed is None or not self.selection.any():
            notify_error("select some blobs first (thresholds or lasso in the plot)")
            return
        layer, data = self._analysed
        if layer not in self.viewer.layers or layer.data is not data:
            self._stale("the analysed layer was removed or replaced; analyse again")
            return
        from napari_tomoseg.core.measure.blobs import reassign_blobs

        to = None if self.to.value == _SURROUNDING else self.phases().id_of(self.to.value)
        try:
            new = reassign_blobs(data, self.blobs, self.selection, to)
        except ValueError as err:
            if "changed since" in str(err):
                self._stale(str(err))
            else:
                notify_error(str(err))
            return
        idx = np.nonzero(new != np.asarray(data))
        old_values = np.asarray(data)[idx].copy()
        new_values = new[idx]
        layer.data_setitem(idx, new_values)  # recorded in napari's history: Ctrl+Z undoes it
        self._last_edit = (layer, idx, old_values, new_values)
        self.undo_button.enabled = True
        notify_info(f"{counted(idx[0].size, 'voxel')} of {layer.name!r} reassigned")
        self.analyse()  # the blob table is stale now

    def _undo_clicked(self) -> None:
        self.undo()

    def undo(self) -> None:
        """Put back the voxels the last reassignment changed (if nobody edited them since)."""
        if self._last_edit is None:
            return
        layer, idx, old_values, new_values = self._last_edit
        if layer not in self.viewer.layers:
            notify_error("the edited layer is gone; nothing to undo")
            self._last_edit = None
            self.undo_button.enabled = False
            return
        if not np.array_equal(np.asarray(layer.data)[idx], new_values):
            notify_error(
                f"{layer.name!r} was edited since the reassignment; use napari's undo (Ctrl+Z) instead"
            )
            return
        layer.data_setitem(idx, old_values)
        self._last_edit = None
        self.undo_button.enabled = False
        notify_info(f"reassignment undone ({counted(idx[0].size, 'voxel')})")
        if not self.runner.running:
            self.analyse()
