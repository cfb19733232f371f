"""The Annotate dock widget: an ``annotations`` labels layer bound to a phase table, and tools to fill
it fast.

phase table (add / rename / recolour; click = paint that phase, or keys 1-9 while "Keys 1-9 paint
phases" is on) -> ``annotations`` (uint8, 0 = not annotated) <- copy the prediction of the current
slice, import another tool's labels (ids remapped in a dialog); counts per phase; "next slice to
correct" from the uncertainty.
Every change is saved (atomically, in a worker) next to the volume and restored when it is reopened
(see :mod:`napari_tomoseg._napari.autosave`).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Dialog, Label, PushButton
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QColorDialog

from napari_tomoseg._napari.advanced import Advanced
from napari_tomoseg._napari.autosave import (
    AUTOSAVE_STORE_SUFFIX,
    AUTOSAVE_SUFFIX,
    autosave_path,
    is_ours,
    iter_save_annotations,
    open_annotation_store,
    restore_annotations,
)
from napari_tomoseg._napari.docking import tabify_docks
from napari_tomoseg._napari.files import source_identity
from napari_tomoseg._napari.jobs import JobControls, JobRunner, JobState
from napari_tomoseg._napari.layers import (
    LayerPicker,
    apply_phases,
    check_image_layer,
    current_slice,
    geometry,
    voxel_size,
)
from napari_tomoseg._napari.notify import notify_error, notify_info, notify_warning
from napari_tomoseg._napari.outputs import choose_folder, choose_input_file
from napari_tomoseg._napari.state import state_for
from napari_tomoseg._napari.tables import PhaseTableView, counted
from napari_tomoseg.core.model.modes import AXIS_NAMES
from napari_tomoseg.core.phases import DEFAULT_COLOURS, Phase, PhaseTable

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

__all__ = [
    "ANNOTATIONS",
    "AUTOSAVE_STORE_SUFFIX",
    "AUTOSAVE_SUFFIX",
    "AnnotateWidget",
    "JobState",
    "RemapDialog",
    "autosave_path",
    "is_ours",
]

ANNOTATIONS = "annotations"
PREDICTION = "prediction"

NOT_ANNOTATED = "not annotated"
#: Painting is quiet for this long before the annotations are saved / recounted.
AUTOSAVE_DELAY_MS = 1500
COUNT_DELAY_MS = 300
#: napari's own keys on a labels layer, taken over by "Keys 1-9 paint phases" (digits only).
NAPARI_DIGIT_KEYS = "1 eraser, 2 brush, 3 polygon, 4 fill, 5 label picker, 6 pan/zoom, 7 transform"
SHORTCUTS = (
    "Keys while the annotations layer is selected:\n"
    "• click a phase in the table: paint that phase\n"
    "• 1-9, with 'Keys 1-9 paint phases' on: paint phase 1-9 (instead of napari's tool keys "
    f"{NAPARI_DIGIT_KEYS})\n"
    "• napari's letter keys always work: P brush, E eraser, F fill, L label picker, Z pan/zoom, "
    "[ and ] brush size, Ctrl+Z undo, Ctrl+Shift+Z redo"
)


class RemapDialog(Dialog):
    """Map the ids of an imported label volume to phases (or to "not annotated")."""

    def __init__(self, ids: Sequence[int], counts: Sequence[int], phases: PhaseTable) -> None:
        from napari_tomoseg.core.io.remap import guess_mapping

        guess = guess_mapping(ids, len(phases))
        targets = [NOT_ANNOTATED, *phases.names]
        self.combos: dict[int, ComboBox] = {
            int(i): ComboBox(
                label=f"id {int(i)} ({counted(int(n), 'voxel')})",
                choices=targets,
                value=targets[int(guess.get(int(i), 0))],
            )
            for i, n in zip(ids, counts, strict=True)
        }
        self._targets = targets
        super().__init__(widgets=list(self.combos.values()))
        self.native.setWindowTitle("Import labels: which id is which phase?")

    def mapping(self) -> dict[int, int]:
        """``{imported id: phase id}`` (0 = not annotated)."""
        return {i: self._targets.index(c.value) for i, c in self.combos.items()}


class _FlushOnHide(QObject):
    """Runs ``flush`` when the dock widget is hidden or closed (a pending autosave is written)."""

    def __init__(self, flush: Any, parent: QObject) -> None:
        super().__init__(parent)
        self._flush = flush

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:
        if event is not None and event.type() in (QEvent.Type.Hide, QEvent.Type.Close):
            self._flush()
        return False


class AnnotateWidget(Container):
    """Create and fill the ``annotations`` layer used to fine-tune and evaluate."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.runner = JobRunner("Annotations")
        self._saver = JobRunner("Saving annotations")
        self._counter: Any = None
        self._count_request = 0
        self.autosave_folder: Path | None = None
        # The image whose annotations the bound layer holds: saves go to its autosave only, even
        # when another image is picked meanwhile.
        self._source_image: Any = None
        self.last_saved: Path | None = None
        self.last_counts: dict[str, tuple[int, int]] | None = None
        self._layer: Any = None

        self.image = LayerPicker(
            napari_viewer,
            "image",
            label="Image",
            tooltip="The volume to annotate",
            accept=lambda ly: ly.ndim == 3 and not getattr(ly, "rgb", False),
        )
        self.axis = ComboBox(label="Slice axis", choices=list(AXIS_NAMES), value="z")
        self.create = PushButton(text="Create / restore annotations layer")
        self.table = PhaseTableView(self.phases)
        self.keys = CheckBox(text="Keys 1-9 paint phases", value=False)
        self.keys.tooltip = (
            "While on, number keys 1-9 on the annotations layer paint phase 1-9 instead of choosing "
            f"napari's tools ({NAPARI_DIGIT_KEYS}); napari's letter keys still choose them. "
            "Off: napari's keys as usual."
        )
        self.help = PushButton(text="?")
        self.help.tooltip = SHORTCUTS
        self.help.native.setMaximumWidth(32)
        self.shortcuts = Label(value=SHORTCUTS)
        self.shortcuts.native.setWordWrap(True)
        self.shortcuts.visible = False
        self.add_phase = PushButton(text="Add phase")
        self.remove_phase = PushButton(text="Remove last phase")
        self.copy_prediction = PushButton(text="Copy prediction into this slice")
        self.overwrite = CheckBox(
            text="Copy the prediction also over annotated voxels", value=False
        )
        self.import_button = PushButton(text="Import labels from file…")
        self.next_slice = PushButton(text="Next slice to correct")
        self.next_slice.tooltip = (
            "Jump to the unannotated slice that would teach the model most: uncertain, and far "
            "from the slices already annotated (needs a segmentation with the uncertainty layer)"
        )
        self.counts = Label(value="")
        self.counts.native.setWordWrap(True)
        self.save_to = PushButton(text="Autosave folder…")
        self.save_status = Label(value="")
        self.save_status.native.setWordWrap(True)
        self.controls = JobControls(self.runner, "")
        self.controls.run_button.visible = False
        self.controls.also_disable(self.import_button, self.next_slice)

        def row(*widgets: Any) -> Container:
            c = Container(widgets=list(widgets), layout="horizontal", labels=False)
            c.margins = (0, 0, 0, 0)
            return c

        form = Container(widgets=[self.image, self.axis])
        form.margins = (0, 0, 0, 0)
        self.advanced = Advanced(
            [self.overwrite, self.import_button, row(self.save_to, self.save_status)]
        )
        super().__init__(
            widgets=[
                form,
                self.create,
                self.table,
                row(self.add_phase, self.remove_phase),
                row(self.keys, self.help),
                self.shortcuts,
                self.copy_prediction,
                self.next_slice,
                self.counts,
                self.advanced,
                self.controls,
            ],
            labels=False,
        )
        tabify_docks(self)

        self._autosave_timer = QTimer(self.native)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self.save_now)
        self._count_timer = QTimer(self.native)
        self._count_timer.setSingleShot(True)
        self._count_timer.setInterval(COUNT_DELAY_MS)
        self._count_timer.timeout.connect(self.update_counts)
        # A dock closed or hidden right after painting still saves what was painted.
        self._flusher = _FlushOnHide(self.flush_autosave, self.native)
        self.native.installEventFilter(self._flusher)

        self.create.changed.connect(self._create_clicked)
        self.table.phase_clicked.connect(self.select_phase)
        self.table.colour_clicked.connect(self._choose_colour)
        self.table.renamed.connect(self.rename)
        self.add_phase.changed.connect(self._add_phase)
        self.remove_phase.changed.connect(self._remove_phase)
        self.copy_prediction.changed.connect(self._copy_clicked)
        self.import_button.changed.connect(self._import_clicked)
        self.next_slice.changed.connect(self._next_clicked)
        self.save_to.changed.connect(self._choose_folder)
        self.keys.changed.connect(self._keys_toggled)
        self.help.changed.connect(self._help_clicked)
        self.state.phases_changed.connect(self._phases_changed)
        if ANNOTATIONS in napari_viewer.layers:
            existing = napari_viewer.layers[ANNOTATIONS]
            self._source_image = self._image_of(existing)
            self._bind(existing)

    # phase table -----------------------------------------------------------------------------
    @property
    def phases(self) -> PhaseTable:
        """The phase table of the annotations (shared by the viewer's widgets)."""
        return self.state.phases

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
        self.state.set_phases(phases)

    def _phases_changed(self, phases: PhaseTable) -> None:
        try:
            self.table.show_phases(phases)
        except RuntimeError:  # the dock was closed: stop following the phase table
            self.state.phases_changed.disconnect(self._phases_changed)
            return
        if self._layer is not None:
            apply_phases(self._layer, phases)
            self._bind_keys(self._layer)
            self._schedule()

    def rename(self, phase_id: int, name: str) -> None:
        """Rename a phase (a name already used, or an empty one, is refused with a notification)."""
        names = list(self.phases.names)
        names[phase_id - 1] = name
        try:
            self.set_phases(PhaseTable.from_names(names, [p.colour for p in self.phases.phases]))
        except ValueError as err:
            notify_error(f"Cannot rename the phase: {err}")
            self.table.show_phases(self.phases)

    def _choose_colour(self, phase_id: int) -> None:
        colour = QColorDialog.getColor(QColor(self.phases.phases[phase_id - 1].colour), self.native)
        if colour.isValid():
            self.recolour(phase_id, colour.name())

    def recolour(self, phase_id: int, colour: str) -> None:
        """Give phase ``phase_id`` the colour ``colour`` (``#rrggbb``)."""
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
        self.table.select_phase(phase_id)

    # the layer -------------------------------------------------------------------------------
    @property
    def layer(self) -> Any:
        """The bound ``annotations`` layer, or None."""
        return self._layer

    def _create_clicked(self) -> None:
        self.ensure_layer()

    def ensure_layer(self) -> Any:
        """The ``annotations`` layer for the chosen image: existing, restored from the autosave,
        or new (zeros). None (with a notification) if there is no usable image."""
        if self._layer is not None and self._layer in self.viewer.layers:
            return self._layer
        image = self.image.layer
        try:
            volume = check_image_layer(image)
        except ValueError as err:
            notify_error(f"Cannot annotate: {err}")
            return None
        assert image is not None  # check_image_layer refuses None
        shape = tuple(int(s) for s in volume.shape)
        try:
            source = source_identity(image)
        except (ValueError, OSError) as err:
            notify_error(f"Cannot annotate: {err}")
            return None
        if ANNOTATIONS in self.viewer.layers:
            layer = self.viewer.layers[ANNOTATIONS]
            if tuple(layer.data.shape) != shape:
                notify_error(
                    f"The layer {ANNOTATIONS!r} has shape {tuple(layer.data.shape)} but image "
                    f"{image.name!r} has {shape}; rename or remove it first"
                )
                return None
            owner = layer.metadata.get("tomoseg_source")
            if owner is not None and owner != source.key:
                notify_error(
                    f"The layer {ANNOTATIONS!r} holds the annotations of another volume "
                    f"({owner}), not of {source.description}; rename or remove it first"
                )
                return None
            layer.metadata["tomoseg_source"] = source.key
            self._source_image = image
            self._bind(layer)
            return layer
        from napari_tomoseg.core.io.labelstore import needs_store

        message = None
        if needs_store(shape):
            try:
                found = open_annotation_store(image, shape, self.phases, self.autosave_folder)
            except (ValueError, OSError) as err:
                notify_error(f"Cannot annotate: {err}")
                return None
            data, message, self.last_saved = found.data, found.message, found.path
            if found.phases is not None:
                self.state.set_phases(found.phases)
        else:
            data = np.zeros(shape, np.uint8)
            try:
                restored = restore_annotations(image, shape, self.autosave_folder)
            except (ValueError, OSError) as err:
                notify_warning(f"Could not restore the saved annotations: {err}")
                restored = None
            if restored is not None:
                data[...] = restored.data
                message, self.last_saved = restored.message, restored.path
                if restored.phases is not None:
                    self.state.set_phases(restored.phases)
        layer = self.viewer.add_labels(data, name=ANNOTATIONS, **geometry(image), opacity=0.7)
        layer.metadata["tomoseg_image"] = image.name
        layer.metadata["tomoseg_source"] = source.key
        self._source_image = image
        self._bind(layer)
        if message:
            notify_info(message)
        return layer

    def _image_of(self, layer: Any) -> Any:
        """The image layer whose annotations ``layer`` holds (by source identity), or None."""
        from napari.layers import Image

        owner = layer.metadata.get("tomoseg_source")
        if owner is None:
            return None
        for image in self.viewer.layers:
            if not isinstance(image, Image) or getattr(image, "multiscale", False):
                continue
            if tuple(image.data.shape) != tuple(layer.data.shape):
                continue
            try:
                if source_identity(image).key == owner:
                    return image
            except (ValueError, OSError):
                continue
        return None

    def _bind(self, layer: Any) -> None:
        if self._layer is layer:
            return
        if np.dtype(layer.data.dtype) != np.uint8:  # painting lags on wide label arrays
            values = np.asarray(layer.data)
            if values.size and (int(values.max()) > 255 or int(values.min()) < 0):
                notify_error(f"Layer {layer.name!r} holds ids outside 0..255; cannot use it")
                return
            layer.data = values.astype(np.uint8)
        self._layer = layer
        apply_phases(layer, self.phases)
        self._bind_keys(layer)
        layer.events.paint.connect(self._schedule)
        layer.events.data.connect(self._schedule)
        self.update_counts()

    def _bind_keys(self, layer: Any) -> None:
        """Keys 1-9 paint phases on ``layer`` while the check box says so; napari's keys otherwise."""
        n = min(9, len(self.phases)) if self.keys.value else 0
        for i in range(1, 10):
            if i <= n:
                layer.bind_key(str(i), self._key_handler(i), overwrite=True)
            else:
                layer.bind_key(str(i), None)  # napari's own binding of the key applies again

    def _keys_toggled(self, *_: Any) -> None:
        if self._layer is not None:
            self._bind_keys(self._layer)

    def _help_clicked(self) -> None:
        self.shortcuts.visible = not self.shortcuts.visible

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
        axis = AXIS_NAMES.index(self.axis.value)
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
        lines = [
            f"{name}: {counted(v, 'voxel')} in {counted(s, 'slice')}"
            for name, (v, s) in self.last_counts.items()
        ]
        try:
            self.counts.value = "\n".join(lines)
        except RuntimeError:  # the dock was closed meanwhile
            pass

    # autosave --------------------------------------------------------------------------------
    def _choose_folder(self) -> None:
        folder = choose_folder(self.native, "Save annotations in")
        if folder is not None:
            self.autosave_folder = folder
            self.save_now()

    def flush_autosave(self) -> None:
        """Write a pending autosave now (the dock is being hidden or closed)."""
        if self._autosave_timer.isActive():
            self._autosave_timer.stop()
            self.save_now()

    def save_now(self) -> bool:
        """Write the annotations now (atomically, in a worker). Never replaces a file not ours."""
        layer = self._layer
        image = self._source_image if self._source_image is not None else self.image.layer
        if layer is None or image is None or layer not in self.viewer.layers:
            return False
        if self._saver.running:
            self._autosave_timer.start()  # try again once the current write is done
            return False
        phases = self.phases
        if not isinstance(layer.data, np.ndarray):
            return self._save_store(layer, phases)
        try:
            owner = layer.metadata.get("tomoseg_source")
            source = source_identity(image)
            if owner is not None and owner != source.key:
                raise ValueError(
                    f"the layer {layer.name!r} holds the annotations of another volume ({owner}), "
                    f"not of {source.description}"
                )
            path = autosave_path(image, self.autosave_folder)
        except (ValueError, OSError) as err:
            self._autosave_timer.stop()
            notify_error(f"Annotations not saved: {err}")
            return False
        data = np.array(layer.data, dtype=np.uint8, copy=True)
        voxel = voxel_size(layer)

        def saved(p: Path) -> None:
            self.last_saved = p
            try:
                self.save_status.value = f"saved to {p}"
            except RuntimeError:  # the dock was closed meanwhile
                pass

        self._saver.start(
            lambda token: iter_save_annotations(path, data, phases, voxel), on_return=saved
        )
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
        self.save_status.value = f"saved as painted, in {where}"
        return True

    # filling ---------------------------------------------------------------------------------
    def _copy_clicked(self) -> None:
        self.copy_prediction_slice()

    def copy_prediction_slice(self) -> int:
        """Copy the prediction of the slice on screen into the annotations (only into unannotated
        voxels unless "Copy the prediction also over annotated voxels" is checked). Undoable. Returns voxels changed."""
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
        axis = AXIS_NAMES.index(self.axis.value)
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
        if not self.overwrite.value:
            take &= dst == 0
        take &= src != dst
        coords = list(np.nonzero(take))
        full = np.full(coords[0].shape, index, dtype=np.intp)
        indices = tuple(full if a == axis else coords.pop(0) for a in range(3))
        if take.any():
            layer.data_setitem(indices, src[take])  # through napari's history: Ctrl+Z undoes it
        self._schedule()
        n = int(take.sum())
        self.controls.status.value = (
            f"Copied {counted(n, 'voxel')} of the prediction into {AXIS_NAMES[axis]}={index}"
        )
        return n

    def _import_clicked(self) -> None:
        path = choose_input_file(
            self.native, "Import labels", "Label volumes (*.tif *.tiff *.npy *.zarr *.h5 *.hdf5)"
        )
        if path is not None:
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
                dialog = RemapDialog(ids, counts, self.phases)
                if not dialog.exec():
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
        self.controls.status.value = f"Imported {counted(n, 'annotated voxel')}"
        return n

    def _next_clicked(self) -> None:
        self.goto_next_slice()

    def goto_next_slice(self) -> bool:
        """Jump to the unannotated slice with the highest mean uncertainty."""
        layer = self.ensure_layer()
        if layer is None or self.runner.running:
            return False
        scores = self.state.slice_scores
        if scores is None or tuple(scores.shape) != tuple(layer.data.shape):
            notify_error(
                "No uncertainty for this volume: segment it first with 'Uncertainty layer' checked"
            )
            return False
        axis = AXIS_NAMES.index(self.axis.value)
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
            self.controls.status.value = (
                f"Next slice to correct: {AXIS_NAMES[axis]}={best[0].index} "
                f"(mean uncertainty {best[0].score:.2f}, far from the annotated slices)"
            )

        self.runner.start(job, on_return=jump)
        return True
