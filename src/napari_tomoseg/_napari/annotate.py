"""The Annotate dock widget: an ``annotations`` labels layer bound to a phase table, and tools to fill
it fast.

phase table (add / rename / recolour; click or number key = paint that phase) -> ``annotations``
(uint8, 0 = not annotated) <- copy the prediction of the current slice, import another tool's labels
(ids remapped in a dialog); counts per phase; "next slice to correct" from the uncertainty layer.
Every change is saved (atomically, in a worker) next to the volume and restored when it is reopened.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_tomoseg._napari._common import (
    JobControls,
    JobRunner,
    JobState,
    LayerCombo,
    apply_phases,
    check_image_layer,
    companion_path,
    current_slice,
    geometry,
    notify_error,
    notify_info,
    notify_warning,
    session,
    voxel_size,
)
from napari_tomoseg.core.phases import DEFAULT_COLOURS, Phase, PhaseTable

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

ANNOTATIONS = "annotations"
PREDICTION = "prediction"
AUTOSAVE_SUFFIX = ".tomoseg-annotations.tif"
AUTOSAVE_STORE_SUFFIX = ".tomoseg-annotations.zarr"
AXES = ("z", "y", "x")


def autosave_path(image: Any, folder: Path | None = None) -> Path:
    """Where the annotations of ``image`` are autosaved: next to its file (``<file>.tomoseg-
    annotations.tif``, or ``.zarr`` for a volume too big for memory), in ``folder`` if given, or in
    ``autosave_dir()`` for in-memory volumes."""
    suffix = AUTOSAVE_STORE_SUFFIX if _uses_store(image) else AUTOSAVE_SUFFIX
    return companion_path(image, suffix, folder)


def _uses_store(image: Any) -> bool:
    from napari_tomoseg.core.io.labelstore import needs_store

    return needs_store(check_image_layer(image).shape)


def is_ours(path: Path) -> bool:
    """True if ``path`` is a label file written by napari-tomoseg (safe to replace by an autosave)."""
    from napari_tomoseg.core.io import read_label_phases

    try:
        return read_label_phases(path) is not None
    except (ValueError, OSError):
        return False


class RemapDialog(QDialog):
    """Map the ids of an imported label volume to phases (or to "not annotated")."""

    def __init__(
        self, ids: Any, counts: Any, phases: PhaseTable, parent: QWidget | None = None
    ) -> None:
        from napari_tomoseg.core.io.remap import guess_mapping

        super().__init__(parent)
        self.setWindowTitle("Import labels: which id is which phase?")
        guess = guess_mapping(ids, len(phases))
        self.combos: dict[int, QComboBox] = {}
        form = QFormLayout()
        targets = ["not annotated", *phases.names]
        for i, n in zip(ids, counts, strict=True):
            combo = QComboBox()
            combo.addItems(targets)
            combo.setCurrentIndex(int(guess.get(int(i), 0)))
            self.combos[int(i)] = combo
            form.addRow(f"id {int(i)} ({int(n):,} voxels)", combo)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
        )
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(buttons)

    def mapping(self) -> dict[int, int]:
        return {i: c.currentIndex() for i, c in self.combos.items()}


class AnnotateWidget(QWidget):
    """Create and fill the ``annotations`` layer used to fine-tune and evaluate."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session(napari_viewer)
        self.session.widgets["annotate"] = self
        self.runner = JobRunner("Annotations")
        self._saver = JobRunner("Saving annotations")
        self._counter: Any = None
        self._count_request = 0
        self.autosave_folder: Path | None = None
        self.last_saved: Path | None = None
        self._layer: Any = None

        self.image = LayerCombo(napari_viewer, "image", accept=lambda ly: ly.ndim == 3)
        self.create = QPushButton("Create / restore annotations layer")
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["key", "phase (click to paint)", "colour"])
        self.table.verticalHeader().setVisible(False)
        self.add_phase = QPushButton("Add phase")
        self.remove_phase = QPushButton("Remove last phase")
        self.axis = QComboBox()
        self.axis.addItems(list(AXES))
        self.copy_prediction = QPushButton("Copy prediction into this slice")
        self.overwrite = QCheckBox("also over annotated voxels")
        self.import_button = QPushButton("Import labels from file…")
        self.next_slice = QPushButton("Next slice to correct")
        self.next_slice.setToolTip(
            "Jump to the unannotated slice where the model is least sure (needs a segmentation "
            "with the uncertainty layer)"
        )
        self.counts = QLabel("")
        self.counts.setWordWrap(True)
        self.save_to = QPushButton("Autosave folder…")
        self.save_status = QLabel("")
        self.save_status.setWordWrap(True)
        self.controls = JobControls(self.runner, "")
        self.controls.run_button.hide()
        self.controls.also_disable(self.import_button, self.next_slice)

        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Slice axis", self.axis)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.create)
        layout.addWidget(self.table)
        row = QHBoxLayout()
        row.addWidget(self.add_phase)
        row.addWidget(self.remove_phase)
        layout.addLayout(row)
        row2 = QHBoxLayout()
        row2.addWidget(self.copy_prediction)
        row2.addWidget(self.overwrite)
        layout.addLayout(row2)
        layout.addWidget(self.import_button)
        layout.addWidget(self.next_slice)
        layout.addWidget(self.counts)
        row3 = QHBoxLayout()
        row3.addWidget(self.save_to)
        row3.addWidget(self.save_status, 1)
        layout.addLayout(row3)
        layout.addWidget(self.controls)
        layout.addWidget(self.controls.status)
        layout.addStretch(1)

        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(1500)
        self._autosave_timer.timeout.connect(self.save_now)
        self._count_timer = QTimer(self)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(300)
        self._count_timer.timeout.connect(self.update_counts)

        self.create.clicked.connect(lambda: self.ensure_layer())
        self.table.cellClicked.connect(self._cell_clicked)
        self.table.itemChanged.connect(self._item_changed)
        self.add_phase.clicked.connect(self._add_phase)
        self.remove_phase.clicked.connect(self._remove_phase)
        self.copy_prediction.clicked.connect(lambda: self.copy_prediction_slice())
        self.import_button.clicked.connect(self._import_clicked)
        self.next_slice.clicked.connect(lambda: self.goto_next_slice())
        self.save_to.clicked.connect(self._choose_folder)
        self.session.events.phases_changed.connect(self._phases_changed)
        self._fill_table()
        if ANNOTATIONS in napari_viewer.layers:
            self._bind(napari_viewer.layers[ANNOTATIONS])

    # phase table -----------------------------------------------------------------------------
    @property
    def phases(self) -> PhaseTable:
        return self.session.phases

    def _fill_table(self) -> None:
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.phases))
        for r, p in enumerate(self.phases.phases):
            key = QTableWidgetItem(str(p.id) if p.id <= 9 else "")
            key.setFlags(key.flags() & ~key.flags().ItemIsEditable)
            self.table.setItem(r, 0, key)
            self.table.setItem(r, 1, QTableWidgetItem(p.name))
            colour = QTableWidgetItem("")
            colour.setBackground(QColor(p.colour))
            colour.setFlags(colour.flags() & ~colour.flags().ItemIsEditable)
            colour.setToolTip("click to change the colour")
            self.table.setItem(r, 2, colour)
        self.table.blockSignals(False)

    def set_phases(self, phases: PhaseTable) -> None:
        """Use ``phases`` for the annotations (refuses to drop a phase that holds annotations)."""
        layer = self._layer
        if layer is not None and len(phases) < len(self.phases):
            from napari_tomoseg.core.io.labelstore import summarize_labels

            top = summarize_labels(layer.data).top_id
            if top > len(phases):
                raise ValueError(
                    f"phase {top} ({self.phases.phases[top - 1].name}) holds annotations; erase "
                    "them before removing the phase"
                )
        self.session.set_phases(phases)

    def _phases_changed(self, phases: PhaseTable) -> None:
        self._fill_table()
        if self._layer is not None:
            apply_phases(self._layer, phases)
            self._bind_keys(self._layer)
            self._schedule()

    def _item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() != 1:
            return
        names = list(self.phases.names)
        names[item.row()] = item.text().strip()
        try:
            self.set_phases(PhaseTable.from_names(names, [p.colour for p in self.phases.phases]))
        except ValueError as err:
            notify_error(f"Cannot rename the phase: {err}")
            self._fill_table()

    def _cell_clicked(self, row: int, column: int) -> None:
        if column == 2:
            colour = QColorDialog.getColor(QColor(self.phases.phases[row].colour), self)
            if colour.isValid():
                self.recolour(row + 1, colour.name())
            return
        self.select_phase(row + 1)

    def recolour(self, phase_id: int, colour: str) -> None:
        ph = list(self.phases.phases)
        ph[phase_id - 1] = Phase(phase_id, ph[phase_id - 1].name, colour)
        self.set_phases(PhaseTable(tuple(ph)))

    def _add_phase(self) -> None:
        n = len(self.phases) + 1
        name = f"phase {n}"
        while name in self.phases.names:
            name += "'"
        colour = DEFAULT_COLOURS[(n - 1) % len(DEFAULT_COLOURS)]
        self.set_phases(PhaseTable((*self.phases.phases, Phase(n, name, colour))))

    def _remove_phase(self) -> None:
        if len(self.phases) <= 1:
            notify_error("A phase table needs at least one phase")
            return
        try:
            self.set_phases(PhaseTable(self.phases.phases[:-1]))
        except ValueError as err:
            notify_error(f"Cannot remove the phase: {err}")

    def select_phase(self, phase_id: int) -> None:
        """Paint ``phase_id`` from now on (creates the annotations layer if needed)."""
        if not 1 <= phase_id <= len(self.phases):
            return
        layer = self.ensure_layer()
        if layer is None:
            return
        layer.selected_label = phase_id
        layer.mode = "paint"
        self.viewer.layers.selection.active = layer
        self.table.selectRow(phase_id - 1)

    # the layer -------------------------------------------------------------------------------
    @property
    def layer(self) -> Any:
        return self._layer

    def ensure_layer(self) -> Any:
        """The ``annotations`` layer for the chosen image: existing, restored from the autosave,
        or new (zeros). None (with a notification) if there is no usable image."""
        if self._layer is not None and self._layer in self.viewer.layers:
            return self._layer
        try:
            image = self.image.layer()
            volume = check_image_layer(image)
        except ValueError as err:
            notify_error(f"Cannot annotate: {err}")
            return None
        shape = tuple(int(s) for s in volume.shape)
        if ANNOTATIONS in self.viewer.layers:
            layer = self.viewer.layers[ANNOTATIONS]
            if tuple(layer.data.shape) != shape:
                notify_error(
                    f"The layer {ANNOTATIONS!r} has shape {tuple(layer.data.shape)} but image "
                    f"{image.name!r} has {shape}; rename or remove it first"
                )
                return None
            self._bind(layer)
            return layer
        from napari_tomoseg.core.io.labelstore import needs_store

        if needs_store(shape):
            try:
                data, restored = self._open_store(image, shape)
            except (ValueError, OSError) as err:
                notify_error(f"Cannot annotate: {err}")
                return None
        else:
            data = np.zeros(shape, np.uint8)
            restored = self._restore(image, data)
        layer = self.viewer.add_labels(data, name=ANNOTATIONS, **geometry(image), opacity=0.7)
        layer.metadata["tomoseg_image"] = image.name
        self._bind(layer)
        if restored:
            notify_info(restored)
        return layer

    def _open_store(self, image: Any, shape: tuple[int, ...]) -> tuple[Any, str | None]:
        """The annotations of a volume too big for memory: a zarr store next to it, reopened if it
        exists. Painting writes straight into it, so nothing is lost in a crash."""
        from napari_tomoseg.core.io.labelstore import (
            create_store,
            open_store,
            store_phases,
            summarize_labels,
        )

        path = autosave_path(image, self.autosave_folder)
        self.last_saved = path
        if path.exists():
            data = open_store(path, shape=shape, kind="labels")
            phases = store_phases(data)
            if phases is not None:
                self.session.set_phases(phases)
            n = summarize_labels(data).labelled
            return data, f"Restored {n:,} annotated voxels from {path}"
        path.parent.mkdir(parents=True, exist_ok=True)
        return create_store(path, shape, phases=self.phases, voxel_size=voxel_size(image)), None

    def _restore(self, image: Any, data: np.ndarray) -> str | None:
        path = autosave_path(image, self.autosave_folder)
        if not path.is_file() or not is_ours(path):
            return None
        from napari_tomoseg.core.io import read_label_phases, read_labels

        try:
            saved = read_labels(path)
            phases = read_label_phases(path)
        except (ValueError, OSError) as err:
            notify_warning(f"Could not restore the annotations saved in {path}: {err}")
            return None
        if saved.shape != data.shape:
            notify_warning(
                f"Annotations saved in {path} have shape {saved.shape}, the volume {data.shape}; "
                "not restored"
            )
            return None
        data[...] = saved
        if phases is not None:
            self.session.set_phases(phases)
        self.last_saved = path
        return f"Restored {int(np.count_nonzero(saved)):,} annotated voxels from {path}"

    def _bind(self, layer: Any) -> None:
        if self._layer is layer:
            return
        if np.dtype(layer.data.dtype) != np.uint8:
            top = int(np.asarray(layer.data).max()) if layer.data.size else 0
            if top > 255 or int(np.asarray(layer.data).min()) < 0:
                notify_error(f"Layer {layer.name!r} holds ids outside 0..255; cannot use it")
                return
            layer.data = np.asarray(layer.data).astype(np.uint8)
        self._layer = layer
        apply_phases(layer, self.phases)
        self._bind_keys(layer)
        layer.events.paint.connect(self._schedule)
        layer.events.data.connect(self._schedule)
        self.update_counts()

    def _bind_keys(self, layer: Any) -> None:
        for i in range(1, 10):
            if i <= len(self.phases):
                layer.bind_key(str(i), self._key_handler(i), overwrite=True)

    def _key_handler(self, phase_id: int) -> Any:
        def handler(layer: Any) -> None:
            self.select_phase(phase_id)

        return handler

    def _schedule(self, *_: Any) -> None:
        self._count_timer.start()
        self._autosave_timer.start()

    # counts ----------------------------------------------------------------------------------
    def update_counts(self) -> None:
        """Recount annotated voxels and slices per phase (in a worker; the label updates after)."""
        layer = self._layer
        if layer is None:
            return
        data = layer.data
        axis = AXES.index(self.axis.currentText())
        n = len(self.phases)

        def count() -> tuple[np.ndarray, np.ndarray]:
            # Only the chunks holding annotations are read when the layer is a store.
            from napari_tomoseg.core.io.labelstore import summarize_labels

            summary = summarize_labels(data, n_ids=n)
            return summary.voxels, summary.slices_per_id(axis)

        from napari.qt.threading import create_worker

        # Counts arrive out of order when edits come quickly: only the latest request is shown.
        self._count_request += 1
        request = self._count_request
        worker = create_worker(count, _ignore_errors=True)
        worker.returned.connect(
            lambda res: self._show_counts(res) if request == self._count_request else None
        )
        self._counter = worker
        worker.start()

    def _show_counts(self, result: tuple[np.ndarray, np.ndarray]) -> None:
        voxels, slices = result
        self.last_counts = {
            p.name: (int(voxels[p.id]), int(slices[p.id]))
            for p in self.phases.phases
            if p.id < len(voxels)
        }
        lines = [f"{name}: {v:,} voxels in {s} slices" for name, (v, s) in self.last_counts.items()]
        try:
            self.counts.setText("\n".join(lines))
        except RuntimeError:
            pass

    # autosave --------------------------------------------------------------------------------
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save annotations in")
        if folder:
            self.autosave_folder = Path(folder)
            self.save_now()

    def save_now(self) -> bool:
        """Write the annotations now (atomically, in a worker). Never replaces a file not ours."""
        layer = self._layer
        image = self.image.layer()
        if layer is None or image is None or layer not in self.viewer.layers:
            return False
        if self._saver.running:
            self._autosave_timer.start()  # try again once the current write is done
            return False
        phases = self.phases
        if not isinstance(layer.data, np.ndarray):
            return self._save_store(layer, phases)
        path = autosave_path(image, self.autosave_folder)
        data = np.array(layer.data, dtype=np.uint8, copy=True)
        voxel = voxel_size(layer)

        def job(token: Any) -> Generator[None, None, Path]:
            from napari_tomoseg.core.io import write_labels

            yield from ()
            if path.exists() and not is_ours(path):
                raise FileExistsError(
                    f"{path} exists and was not written by napari-tomoseg; choose another autosave "
                    "folder (Autosave folder…)"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            return write_labels(path, data, phases=phases, voxel_size=voxel, overwrite=True)

        def saved(p: Path) -> None:
            self.last_saved = p
            try:
                self.save_status.setText(f"saved to {p}")
            except RuntimeError:
                pass

        self._saver.start(job, on_return=saved)
        return True

    def _save_store(self, layer: Any, phases: PhaseTable) -> bool:
        from napari_tomoseg.core.io.labelstore import set_store_phases

        if not hasattr(layer.data, "attrs"):
            return False  # e.g. a dask array: read-only, nothing of ours to save
        try:
            set_store_phases(layer.data, phases)
        except OSError as err:
            notify_error(f"Could not record the phase table with the annotations: {err}")
            return False
        where = self.last_saved or "the annotation store"
        self.save_status.setText(f"saved as painted, in {where}")
        return True

    # filling ---------------------------------------------------------------------------------
    def copy_prediction_slice(self) -> int:
        """Copy the prediction of the slice on screen into the annotations (only into unannotated
        voxels unless "also over annotated voxels" is checked). Undoable. Returns voxels changed."""
        layer = self.ensure_layer()
        if layer is None:
            return 0
        if PREDICTION not in self.viewer.layers:
            notify_error("No prediction layer: segment the volume first (Segment widget)")
            return 0
        pred = self.viewer.layers[PREDICTION].data
        if tuple(pred.shape) != tuple(layer.data.shape):
            notify_error(
                f"The prediction has shape {tuple(pred.shape)}, the annotations "
                f"{tuple(layer.data.shape)}: segment this image first"
            )
            return 0
        axis = AXES.index(self.axis.currentText())
        _, index = current_slice(self.viewer, axis)
        where: list[Any] = [slice(None)] * 3
        where[axis] = index
        src = np.asarray(pred[tuple(where)])
        if int(src.max(initial=0)) > len(self.phases):
            notify_error(
                f"The prediction holds phase {int(src.max())} but the phase table has "
                f"{len(self.phases)} phases; add phases first"
            )
            return 0
        dst = np.asarray(layer.data[tuple(where)])
        take = src > 0
        if not self.overwrite.isChecked():
            take &= dst == 0
        take &= src != dst
        coords = list(np.nonzero(take))
        full = [np.full(coords[0].shape, index, dtype=np.intp)]
        indices = tuple(full[0] if a == axis else coords.pop(0) for a in range(3))
        if take.any():
            layer.data_setitem(indices, src[take])
        self._schedule()
        n = int(take.sum())
        self.controls.status.setText(
            f"Copied {n:,} voxels of the prediction into {AXES[axis]}={index}"
        )
        return n

    def _import_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Import labels", "", "Label volumes (*.tif *.tiff *.npy *.zarr *.h5 *.hdf5)"
        )
        if path:
            self.import_file(path)

    def import_file(self, path: str | Path, *, mapping: dict[int, int] | None = None) -> bool:
        """Read a label volume in a worker, ask how to map its ids (unless ``mapping``), merge it in."""
        layer = self.ensure_layer()
        if layer is None or self.runner.running:
            return False
        shape = tuple(layer.data.shape)

        def job(token: Any) -> Generator[None, None, Any]:
            from napari_tomoseg.core.io import read_labels
            from napari_tomoseg.core.io.remap import label_ids

            yield from ()
            labels = read_labels(path)
            if labels.shape != shape:
                raise ValueError(
                    f"{path} has shape {labels.shape} but the annotations {shape}; import labels "
                    "of this volume"
                )
            return labels, *label_ids(labels)

        def loaded(res: Any) -> None:
            labels, ids, counts = res
            chosen = mapping
            if chosen is None:
                dialog = RemapDialog(ids, counts, self.phases, self)
                if dialog.exec() != QDialog.DialogCode.Accepted:
                    return
                chosen = dialog.mapping()
            self.apply_import(labels, chosen)

        self.runner.start(job, on_return=loaded)
        return True

    def apply_import(self, labels: Any, mapping: dict[int, int]) -> int:
        """Merge remapped labels into the annotations (mapped ids replace, 'not annotated' keeps)."""
        from napari_tomoseg.core.io.remap import remap_labels

        layer = self.ensure_layer()
        mapped = remap_labels(labels, mapping, len(self.phases))
        if mapped.shape != tuple(layer.data.shape):
            raise ValueError("imported labels and annotations differ in shape")
        take = mapped > 0
        n = int(take.sum())
        if isinstance(layer.data, np.ndarray):
            data = np.array(layer.data, copy=True)
            data[take] = mapped[take]
            layer.data = data
        else:  # a store: write the slabs that change, in place
            depth = int(layer.data.chunks[0]) if hasattr(layer.data, "chunks") else 8
            for z0 in range(0, mapped.shape[0], depth):
                sl = slice(z0, z0 + depth)
                if take[sl].any():
                    block = np.asarray(layer.data[sl])
                    block[take[sl]] = mapped[sl][take[sl]]
                    layer.data[sl] = block
            layer.refresh()
        self._schedule()
        self.controls.status.setText(f"Imported {n:,} annotated voxels")
        return n

    def goto_next_slice(self) -> bool:
        """Jump to the unannotated slice with the highest mean uncertainty."""
        layer = self.ensure_layer()
        if layer is None or self.runner.running:
            return False
        scores = self.session.slice_scores
        if scores is None or tuple(scores.shape) != tuple(layer.data.shape):
            notify_error(
                "No uncertainty for this volume: segment it first with 'Uncertainty layer' checked"
            )
            return False
        axis = AXES.index(self.axis.currentText())
        ann = layer.data

        def job(token: Any) -> Generator[None, None, Any]:
            from napari_tomoseg.core.io.labelstore import summarize_labels
            from napari_tomoseg.core.measure.uncertainty import rank_scores

            yield from ()
            annotated = summarize_labels(ann).slices(axis)
            return rank_scores(scores.scores(axis), n=1, skip=annotated)

        def jump(best: Any) -> None:
            if not best:
                notify_info("Every slice holds annotations already")
                return
            self.viewer.dims.set_current_step(axis, best[0].index)
            self.controls.status.setText(
                f"Most uncertain unannotated slice: {AXES[axis]}={best[0].index} "
                f"(mean uncertainty {best[0].score:.2f})"
            )

        self.runner.start(job, on_return=jump)
        return True

    def closeEvent(self, event: Any) -> None:
        if self._autosave_timer.isActive():
            self._autosave_timer.stop()
            self.save_now()
        super().closeEvent(event)


__all__ = ["AnnotateWidget", "JobState", "RemapDialog", "autosave_path"]
