"""Artifact clean-up dock widget: find blobs of a phase slice by slice, select, reassign (undoable).

labels layer + phase -> :func:`core.postprocess.iter_find_blobs` in a worker -> scatter plot of area
vs aspect ratio (log axes) -> selection by thresholds or lasso -> ``blob selection`` layer in the
viewer -> :func:`core.postprocess.reassign_blobs` -> the layer's voxels edited through napari's
history (Ctrl+Z undoes it; so does the Undo button).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_tomoseg._napari._common import (
    JobControls,
    JobRunner,
    LayerCombo,
    geometry,
    layer_phases,
    notify_error,
    notify_info,
    session,
)
from napari_tomoseg.core.phases import PhaseTable

if TYPE_CHECKING:
    import napari

    from napari_tomoseg.core.measure.blobs import BlobTable

log = logging.getLogger(__name__)

__all__ = ["SELECTION_LAYER", "CleanupWidget"]

SELECTION_LAYER = "blob selection"
_SELECTION_COLOUR = "#ff00ff"
_SURROUNDING = "(surrounding phase)"


class CleanupWidget(QWidget):
    """Select large, elongated blobs of a phase (ring artifacts, streaks) and give them another phase."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.runner = JobRunner("Finding blobs")
        self.blobs: BlobTable | None = None
        self.selection: npt.NDArray[np.bool_] = np.zeros(0, dtype=bool)
        self._analysed: tuple[Any, Any] | None = None  # (layer, data) the blobs belong to
        self._last_edit: tuple[Any, tuple[np.ndarray, ...], np.ndarray, np.ndarray] | None = None

        self.layer_combo = LayerCombo(
            napari_viewer,
            "labels",
            accept=lambda ly: ly.name != SELECTION_LAYER and ly.name != "errors",
        )
        self.phase_combo = QComboBox()
        self.axis_combo = QComboBox()
        self.axis_combo.addItems(["z", "y", "x"])
        self.min_area = QDoubleSpinBox()
        self.min_area.setRange(0, 1e9)
        self.min_area.setDecimals(0)
        self.min_area.setValue(50)
        self.min_area.setSuffix(" px")
        self.min_aspect = QDoubleSpinBox()
        self.min_aspect.setRange(1, 1e4)
        self.min_aspect.setDecimals(1)
        self.min_aspect.setValue(4)
        self.to_combo = QComboBox()
        self.controls = JobControls(self.runner, "Analyse")
        self.reassign_button = QPushButton("Reassign selected blobs")
        self.undo_button = QPushButton("Undo")
        self.reassign_button.setEnabled(False)
        self.undo_button.setEnabled(False)
        self.controls.also_disable(self.reassign_button)
        self.summary = QLabel("Analyse a labels layer to see its blobs.")
        self.summary.setWordWrap(True)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax = self.figure.add_subplot(111)
        self._scatter: Any = None
        self._lasso: Any = None

        form = QFormLayout()
        form.addRow("Labels", self.layer_combo)
        form.addRow("Phase", self.phase_combo)
        form.addRow("Slices along", self.axis_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.controls)
        layout.addWidget(self.canvas)
        thresholds = QFormLayout()
        thresholds.addRow("Min. area", self.min_area)
        thresholds.addRow("Min. aspect ratio", self.min_aspect)
        thresholds.addRow("Reassign to", self.to_combo)
        layout.addLayout(thresholds)
        row = QHBoxLayout()
        row.addWidget(self.reassign_button)
        row.addWidget(self.undo_button)
        layout.addLayout(row)
        layout.addWidget(self.summary)
        layout.addStretch(1)

        self.layer_combo.currentTextChanged.connect(self._fill_phases)
        self.controls.run_button.clicked.connect(self.analyse)
        self.min_area.valueChanged.connect(self._select_by_thresholds)
        self.min_aspect.valueChanged.connect(self._select_by_thresholds)
        self.reassign_button.clicked.connect(self.reassign)
        self.undo_button.clicked.connect(self.undo)
        for name in ("prediction", "annotations"):
            if name in napari_viewer.layers:
                self.layer_combo.set_layer(name)
                break
        self._fill_phases()
        session(napari_viewer).widgets["cleanup"] = self

    # ----------------------------------------------------------------------------------------
    def phases(self) -> PhaseTable:
        layer = self.layer_combo.layer()
        return (layer_phases(layer) if layer is not None else None) or session(self.viewer).phases

    def _fill_phases(self, *_: Any) -> None:
        phases = self.phases()
        current, current_to = self.phase_combo.currentText(), self.to_combo.currentText()
        self.phase_combo.clear()
        self.phase_combo.addItems(list(phases.names))
        self.to_combo.clear()
        self.to_combo.addItems([_SURROUNDING, *phases.names])
        pore = next((n for n in phases.names if n.lower() in ("pore", "pores", "porosity")), None)
        self.phase_combo.setCurrentText(
            current if current in phases.names else (pore or phases.names[-1])
        )
        if current_to in (_SURROUNDING, *phases.names):
            self.to_combo.setCurrentText(current_to)

    def analyse(self) -> None:
        """Find the blobs of the chosen phase in a worker."""
        layer = self.layer_combo.layer()
        if layer is None:
            notify_error("no labels layer: segment the volume or open labels first")
            return
        data = layer.data
        if data.ndim != 3:
            notify_error(
                f"layer {layer.name!r} has shape {tuple(data.shape)}; a 3D label volume is needed"
            )
            return
        phase = self.phases().id_of(self.phase_combo.currentText())
        axis = self.axis_combo.currentIndex()
        self.controls.status.setText("Finding blobs…")

        def make(token: Any) -> Any:
            from napari_tomoseg.core.measure.blobs import iter_find_blobs

            return iter_find_blobs(data, phase, axis=axis, cancel=token)

        self.runner.start(
            make,
            on_return=lambda table: self._show(layer, data, table),
            on_error=lambda err: self.controls.status.setText(f"Analysis failed: {err}"),
            on_stopped=lambda: self.controls.status.setText("Analysis stopped."),
            total=int(data.shape[axis]),
            describe=lambda e: (e.done, f"{e.done}/{e.total} slices"),
        )

    def _show(self, layer: Any, data: Any, table: BlobTable) -> None:
        self.blobs = table
        self._analysed = (layer, data)
        self.ax.clear()
        self._scatter = None
        if len(table):
            self._scatter = self.ax.scatter(table.area, table.aspect_ratio, s=8, picker=False)
            self.ax.set_xscale("log")
            self.ax.set_yscale("log")
            from matplotlib.ticker import FuncFormatter

            plain = FuncFormatter(lambda v, _pos: f"{v:g}")
            self.ax.yaxis.set_major_formatter(plain)
            self.ax.yaxis.set_minor_formatter(plain)
            self.ax.xaxis.set_major_formatter(plain)
            from matplotlib.widgets import LassoSelector

            self._lasso = LassoSelector(self.ax, self._on_lasso)
        self.ax.set_xlabel("area (pixels)")
        self.ax.set_ylabel("aspect ratio (major / minor axis)")
        self.ax.set_title(
            f"{len(table)} blobs of {self.phase_combo.currentText()}", fontsize="small"
        )
        self.controls.status.setText(f"{len(table)} blobs found.")
        self._select_by_thresholds()

    # selection -------------------------------------------------------------------------------
    def _select_by_thresholds(self, *_: Any) -> None:
        if self.blobs is None:
            return
        self.set_selection(
            self.blobs.select(min_area=self.min_area.value(), min_aspect=self.min_aspect.value())
        )

    def _on_lasso(self, vertices: Any) -> None:
        self.select_polygon(np.asarray(vertices, dtype=np.float64))

    def select_polygon(self, vertices: npt.NDArray[np.float64]) -> None:
        """Select the blobs inside a polygon drawn on the plot (data coordinates: area, aspect)."""
        if self.blobs is None or len(vertices) < 3:
            return
        from matplotlib.path import Path as MplPath

        # Compare in display coordinates: on log axes a straight lasso edge is straight on screen.
        to_display = self.ax.transData.transform
        pts = np.column_stack([self.blobs.area, self.blobs.aspect_ratio]).astype(np.float64)
        inside = MplPath(to_display(vertices)).contains_points(to_display(pts))
        self.set_selection(inside)

    def set_selection(self, selection: npt.NDArray[np.bool_]) -> None:
        """Select these blobs (one bool per blob): plot colours, the highlight layer, the summary."""
        assert self.blobs is not None
        self.selection = np.asarray(selection, dtype=bool)
        if self._scatter is not None:
            colours = np.where(
                self.selection[:, None], [[1.0, 0.0, 1.0, 1.0]], [[0.3, 0.45, 0.7, 0.6]]
            )
            self._scatter.set_facecolors(colours)
        self.canvas.draw_idle()
        n, vox = int(self.selection.sum()), int(self.blobs.area[self.selection].sum())
        self.summary.setText(f"{n} of {len(self.blobs)} blobs selected ({vox:,} voxels).")
        self.reassign_button.setEnabled(n > 0 and not self.runner.running)
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
        cmap = DirectLabelColormap(
            color_dict={None: "transparent", 0: "transparent", 1: _SELECTION_COLOUR}
        )
        if SELECTION_LAYER in self.viewer.layers:
            sel = self.viewer.layers[SELECTION_LAYER]
            sel.data = mask
        else:
            sel = self.viewer.add_labels(
                mask,
                name=SELECTION_LAYER,
                **geometry(layer),
                opacity=0.9,
            )
        sel.colormap = cmap

    def _stale(self, message: str) -> None:
        self.blobs = None
        self._analysed = None
        self.selection = np.zeros(0, dtype=bool)
        self.reassign_button.setEnabled(False)
        self.summary.setText("The labels changed since the analysis: analyse again.")
        notify_error(message)

    # editing ---------------------------------------------------------------------------------
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

        target = self.to_combo.currentText()
        to = None if target == _SURROUNDING else self.phases().id_of(target)
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
        self.undo_button.setEnabled(True)
        notify_info(f"{idx[0].size:,} voxels of {layer.name!r} reassigned")
        self.analyse()  # the blob table is stale now

    def undo(self) -> None:
        """Put back the voxels the last reassignment changed (if nobody edited them since)."""
        if self._last_edit is None:
            return
        layer, idx, old_values, new_values = self._last_edit
        if layer not in self.viewer.layers:
            notify_error("the edited layer is gone; nothing to undo")
            self._last_edit = None
            self.undo_button.setEnabled(False)
            return
        if not np.array_equal(np.asarray(layer.data)[idx], new_values):
            notify_error(
                f"{layer.name!r} was edited since the reassignment; use napari's undo (Ctrl+Z) instead"
            )
            return
        layer.data_setitem(idx, old_values)
        self._last_edit = None
        self.undo_button.setEnabled(False)
        notify_info(f"reassignment undone ({idx[0].size:,} voxels)")
        if not self.runner.running:
            self.analyse()
