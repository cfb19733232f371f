"""Measure dock widget: phase fractions, profile, object sizes, local thickness, fibre orientation and
surfaces of any labels layer, in µm.

labels layer (+ image layer) + phases, axis, voxel size, measures -> core
:func:`~napari_tomoseg.core.measure.measurements.iter_measurements` in a worker -> summary table, plots
(profile, sizes, orientation), "Add objects layer" (core ``iter_objects`` in a worker), "Save CSV…" (core
``write_csvs``, the files ``tomoseg measure --csv`` writes) and "Copy" (tab-separated summary).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, LineEdit, PushButton, Select
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_tomoseg._napari.docking import tabify_docks
from napari_tomoseg._napari.jobs import JobControls, JobRunner
from napari_tomoseg._napari.layers import LayerPicker, layer_phases, upsert_labels
from napari_tomoseg._napari.measure_plots import MeasurePlots
from napari_tomoseg._napari.notify import notify_error, notify_info
from napari_tomoseg._napari.outputs import choose_folder, confirm_overwrite, layer_voxel_size
from napari_tomoseg._napari.state import state_for
from napari_tomoseg._napari.tables import ResultTable
from napari_tomoseg.core.measure.measurements import MEASURES, Measurements, MeasureOptions
from napari_tomoseg.core.measure.report import table_to_csv
from napari_tomoseg.core.measure.units import parse_voxel_size
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import CancelToken

if TYPE_CHECKING:
    import napari

    from napari_tomoseg.core.measure.objects import ObjectTable

log = logging.getLogger(__name__)

__all__ = ["OBJECTS_LAYER_PREFIX", "MeasureWidget", "format_voxel_size"]

#: Name of the labels layer of a phase's objects: ``"objects of <phase>"``.
OBJECTS_LAYER_PREFIX = "objects of "
#: Layers the widgets make to show something, never measured by default.
_SHOWN_ONLY = ("errors", "blob selection")
_LABELS = {
    "fractions": "Fractions",
    "profile": "Profile",
    "objects": "Objects, sizes",
    "thickness": "Local thickness",
    "orientation": "Fibre orientation",
    "surface": "Surfaces",
}


def format_voxel_size(size: tuple[float, float, float] | None) -> str:
    """``"1.3"`` for an isotropic size, ``"2,1.3,1.3"`` otherwise, ``""`` when unknown (µm)."""
    if size is None:
        return ""
    if len(set(size)) == 1:
        return f"{size[0]:g}"
    return ",".join(f"{v:g}" for v in size)


class MeasureWidget(Container):
    """Measure a segmentation (any labels layer): fractions, profile, sizes, thickness, orientation,
    surfaces; plots, CSV files and the clipboard."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.runner = JobRunner("Measuring")
        self.result: Measurements | None = None
        self._measured: Any = None  # the layer of the last result

        def measurable(ly: Any) -> bool:
            return ly.name not in _SHOWN_ONLY and not ly.name.startswith(OBJECTS_LAYER_PREFIX)

        self.labels_layer = LayerPicker(
            napari_viewer,
            "labels",
            label="Labels",
            tooltip="The segmentation to measure: any labels layer (prediction, cleaned, loaded)",
            prefer=("prediction",),
            accept=measurable,
        )
        self.image_layer = LayerPicker(
            napari_viewer,
            "image",
            label="Image",
            tooltip="The grey volume: the fibre orientation is computed on it (none: on the labels)",
            optional=True,
            accept=lambda ly: ly.ndim == 3 and not getattr(ly, "rgb", False),
        )
        self.phases_select = Select(label="Phases", choices=[])
        self.phases_select.tooltip = (
            "Phases whose objects, thickness and surfaces are measured (fractions: every phase); "
            "the orientation is the fibre phase's, else the chosen phases'"
        )
        self.phases_select.native.setMaximumHeight(80)
        self.axis = ComboBox(label="Profile along", choices=["z", "y", "x"], value="z")
        self.voxel_size = LineEdit(label="Voxel size (µm)")
        self.voxel_size.tooltip = (
            "One number or z,y,x, with an optional unit (1.3, 2,1.3,1.3, 0.5 mm); read from the "
            "layer's scale. Empty: lengths in voxels"
        )
        self.checks = {name: CheckBox(text=_LABELS[name], value=True) for name in MEASURES}
        self.controls = JobControls(self.runner, "Measure")
        self.summary = Label(value="Measure a labels layer to see its numbers.")
        self.summary.native.setWordWrap(True)
        self.table = ResultTable(tooltip="One row per phase; units in the column names")
        self.copy_button = PushButton(text="Copy", enabled=False)
        self.copy_button.tooltip = "The summary as tab-separated text, for a spreadsheet"
        self.save_button = PushButton(text="Save CSV…", enabled=False)
        self.save_button.tooltip = (
            "One CSV file per measure into a folder (as tomoseg measure --csv)"
        )
        self.objects_phase = ComboBox(label="Objects of", choices=[])
        self.objects_phase.tooltip = "The phase of the size histogram and of the objects layer"
        self.objects_button = PushButton(text="Add objects layer")
        self.objects_button.tooltip = "A labels layer with one id per connected object of the phase"
        self.controls.also_disable(self.objects_button)
        self.plots = MeasurePlots(napari_viewer)

        form = Container(
            widgets=[
                self.labels_layer,
                self.image_layer,
                self.phases_select,
                self.axis,
                self.voxel_size,
            ]
        )
        form.margins = (0, 0, 0, 0)
        rows = []
        for names in (MEASURES[:3], MEASURES[3:]):
            row = Container(
                widgets=[self.checks[n] for n in names], layout="horizontal", labels=False
            )
            row.margins = (0, 0, 0, 0)
            rows.append(row)
        buttons = Container(
            widgets=[self.copy_button, self.save_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        objects = Container(widgets=[self.objects_phase, self.objects_button], layout="horizontal")
        objects.margins = (0, 0, 0, 0)
        super().__init__(
            widgets=[
                form,
                *rows,
                self.controls,
                self.summary,
                self.table,
                buttons,
                self.plots,
                objects,
            ],
            labels=False,
        )

        tabify_docks(self)
        self._watched: Any = None  # the layer whose phase table and scale the form follows
        self.labels_layer.changed.connect(self._layer_changed)
        self.controls.run_button.changed.connect(self._run_clicked)
        self.copy_button.changed.connect(self.copy_summary)
        self.save_button.changed.connect(self._save_clicked)
        self.objects_button.changed.connect(self._objects_clicked)
        self.objects_phase.changed.connect(self._size_phase_changed)
        self._layer_changed()

    # form -----------------------------------------------------------------------------------
    def phases(self) -> PhaseTable:
        """The phase table of the chosen labels layer (or the viewer's)."""
        layer = self.labels_layer.layer
        return (layer_phases(layer) if layer is not None else None) or self.state.phases

    def _layer_changed(self, *_: Any) -> None:
        """Follow the chosen layer: its phase table (now and when it gets one) and its scale."""
        if self._watched is not None:
            self._watched.events.features.disconnect(self._phases_later)
        self._watched = self.labels_layer.layer
        if self._watched is not None:
            self._watched.events.features.connect(self._phases_later)
            self.voxel_size.value = format_voxel_size(layer_voxel_size(self._watched))
            self._check_budget(self._watched)
        self._fill_phases()

    def _phases_later(self, *_: Any) -> None:
        QTimer.singleShot(0, self._fill_phases)

    def reset_choices(self, *args: Any) -> None:
        """napari resets every choice list when a layer is added or removed; the phase lists come
        from the chosen layer's phase table, so fill them again, keeping the user's choice."""
        chosen, objects = tuple(self.phases_select.value or ()), self.objects_phase.value
        super().reset_choices(*args)
        self._fill_phases()
        names = list(self.phases_select.choices)
        kept = [n for n in chosen if n in names]
        if kept:
            self.phases_select.value = kept
        if objects in names:
            self.objects_phase.value = objects

    def _fill_phases(self, *_: Any) -> None:
        try:
            self.native.isVisible()
        except RuntimeError:  # the dock was closed
            return
        names = list(self.phases().names)
        if list(self.phases_select.choices) != names:
            self.phases_select.choices = names
            self.phases_select.value = names
        current = self.objects_phase.value
        self.objects_phase.choices = names
        pore = next((n for n in names if n.lower() in ("pore", "pores", "porosity")), None)
        if current in names:
            self.objects_phase.value = current
        elif names:
            self.objects_phase.value = pore or names[-1]

    def _check_budget(self, layer: Any) -> None:
        """Untick the in-memory measures a big (e.g. zarr-backed) layer is over budget for; the
        streaming ones stay. Ticking them again gets the core's error, naming the budget."""
        from napari_tomoseg.core.measure.objects import BYTES_PER_VOXEL, DEFAULT_MAX_MEMORY
        from napari_tomoseg.core.measure.thickness import BYTES_PER_VOXEL as THICKNESS_BYTES

        n = int(np.prod(self._data(layer).shape))
        for name, per_voxel in (("objects", BYTES_PER_VOXEL), ("thickness", THICKNESS_BYTES)):
            over = per_voxel * n > DEFAULT_MAX_MEMORY
            if over:
                self.checks[name].value = False
            elif self.checks[name].tooltip:  # unticked for the last layer's size: tick again
                self.checks[name].value = True
            self.checks[name].tooltip = (
                f"needs about {per_voxel * n / 2**30:.1f} GiB, over the "
                f"{DEFAULT_MAX_MEMORY / 2**30:.0f} GiB budget: measure a crop"
                if over
                else ""
            )

    @staticmethod
    def _data(layer: Any) -> Any:
        data = layer.data
        return data[0] if getattr(layer, "multiscale", False) else data

    def what(self) -> tuple[str, ...]:
        """The measures ticked."""
        return tuple(n for n in MEASURES if self.checks[n].value)

    def options(self) -> MeasureOptions:
        """The form as core options (ValueError when nothing is ticked)."""
        what = self.what()
        if not what:
            raise ValueError("tick at least one measure")
        chosen = tuple(self.phases_select.value or ())
        all_phases = tuple(self.phases().names)
        return MeasureOptions(
            what=what,
            phases=() if set(chosen) == set(all_phases) else chosen,
            axis=str(self.axis.value),
        )

    def chosen_voxel_size(self) -> tuple[float, float, float] | None:
        """The voxel size typed (µm), or None when the field is empty."""
        text = str(self.voxel_size.value or "").strip()
        return parse_voxel_size(text) if text else None

    # run ------------------------------------------------------------------------------------
    def _run_clicked(self) -> None:
        self.run()

    def run(self) -> bool:
        """Measure in a worker with the form's choices; False (with a notification) when they
        cannot be measured."""
        try:
            layer = self.labels_layer.layer
            if layer is None:
                raise ValueError("no labels layer: segment the volume or open labels first")
            data = self._data(layer)
            if data.ndim != 3:
                raise ValueError(
                    f"layer {layer.name!r} has shape {tuple(data.shape)}; a 3D label volume is "
                    "needed"
                )
            image_layer = self.image_layer.layer
            image = None
            if image_layer is not None:
                image = self._data(image_layer)
                if tuple(image.shape) != tuple(data.shape):
                    raise ValueError(
                        f"image {image_layer.name!r} {tuple(image.shape)} does not match the "
                        f"labels {tuple(data.shape)}; choose the segmented volume or none"
                    )
            if not self.phases_select.value:
                raise ValueError("choose at least one phase")
            options = self.options()
            try:
                voxel_size = self.chosen_voxel_size()
            except ValueError as err:
                raise ValueError(f"voxel size: {err}") from None
            phases = self.phases()
        except ValueError as err:
            notify_error(str(err))
            self.controls.status.value = str(err)
            return False
        image_name = image_layer.name if image_layer is not None else None

        def job(token: CancelToken) -> Any:
            from napari_tomoseg.core.measure.measurements import iter_measurements

            return iter_measurements(
                data,
                phases=phases,
                options=options,
                image=image,
                voxel_size=voxel_size,
                name=layer.name,
                image_name=image_name,
                cancel=token,
            )

        self.controls.status.value = "Measuring…"
        self.runner.start(
            job,
            on_return=lambda m: self._show(layer, m),
            on_error=lambda err: setattr(self.controls.status, "value", f"Measuring failed: {err}"),
            on_stopped=lambda: setattr(self.controls.status, "value", "Measuring stopped."),
            total=1000,
            describe=lambda e: (int(1000 * e.fraction), e.step),
        )
        return True

    def _show(self, layer: Any, m: Measurements) -> None:
        self.result = m
        self._measured = layer
        header, rows = m.summary_table()
        self.table.show_rows(header, rows)
        units = (
            "voxel size (z, y, x) = " + ", ".join(f"{v:g}" for v in m.units.spacing) + " µm"
            if m.units.calibrated
            else "lengths in voxels (no voxel size)"
        )
        lines = [f"{m.name}: {' x '.join(map(str, m.shape))} voxels; {units}."]
        for name, ori in m.orientation.items():
            if ori.voxels:
                p = ", ".join(f"{v:.3f}" for v in ori.principal_direction)
                lines.append(
                    f"Orientation of {name}: a_zz {ori.tensor[0, 0]:.3f}, a_yy "
                    f"{ori.tensor[1, 1]:.3f}, a_xx {ori.tensor[2, 2]:.3f}; principal direction "
                    f"(z, y, x) = ({p})."
                )
        if m.surfaces is not None:
            for (a, b), area in m.surfaces.interface.items():
                lines.append(f"Interface {a} / {b}: {area:.4g} {m.units.area}.")
        lines += [f"Note: {n}." for n in m.notes]
        self.summary.value = "\n".join(lines)
        self.plots.show(m, self.objects_phase.value)
        self.controls.status.value = "Done."
        self.copy_button.enabled = True
        self.save_button.enabled = True

    def _size_phase_changed(self, *_: Any) -> None:
        if self.result is not None:
            self.plots.show(self.result, self.objects_phase.value)

    # objects layer ---------------------------------------------------------------------------
    def _objects_clicked(self) -> None:
        self.add_objects_layer()

    def add_objects_layer(self) -> bool:
        """Label the connected objects of the chosen phase in a worker and show them as a labels
        layer ``objects of <phase>`` (with each object's size in its features)."""
        layer = self.labels_layer.layer
        phase = self.objects_phase.value
        if layer is None or not phase:
            notify_error("no labels layer or phase: choose both first")
            return False
        data = self._data(layer)
        phases = self.phases()
        try:
            voxel_size = self.chosen_voxel_size()
        except ValueError as err:
            notify_error(f"voxel size: {err}")
            return False

        def job(token: CancelToken) -> Any:
            from napari_tomoseg.core.measure.objects import iter_objects

            return iter_objects(
                data, phase, phases=phases, voxel_size=voxel_size, keep_labels=True, cancel=token
            )

        self.controls.status.value = f"Finding the objects of {phase}…"
        self.runner.start(
            job,
            on_return=lambda table: self._show_objects(layer, table),
            on_error=lambda err: setattr(self.controls.status, "value", f"Objects failed: {err}"),
            on_stopped=lambda: setattr(self.controls.status, "value", "Stopped."),
            total=1000,
            describe=lambda e: (int(1000 * e.fraction), e.step),
        )
        return True

    def _show_objects(self, like: Any, table: ObjectTable) -> None:
        name = f"{OBJECTS_LAYER_PREFIX}{table.phase}"
        u = table.units
        features = {
            "index": list(range(len(table) + 1)),
            f"volume ({u.volume})": [0.0, *table.volume.tolist()],
            f"equivalent diameter ({u.length})": [0.0, *table.equivalent_diameter.tolist()],
            "touches border": [False, *table.touches_border.tolist()],
        }
        out = upsert_labels(self.viewer, name, table.labels, like=like)
        out.features = features
        self.controls.status.value = f"{len(table):,} objects of {table.phase} in layer {name!r}."

    # copy and save -------------------------------------------------------------------------
    def summary_text(self, delimiter: str = "\t") -> str:
        """The summary table as text, unrounded (tab-separated for the clipboard)."""
        if self.result is None:
            return ""
        header, rows = self.result.summary_table()
        return table_to_csv(header, rows, delimiter=delimiter)

    def copy_summary(self) -> None:
        """Put the summary table on the clipboard (tab-separated, for spreadsheets)."""
        if self.result is None:
            notify_error("measure first: there is nothing to copy")
            return
        clipboard = QApplication.clipboard()
        if clipboard is None:
            return
        clipboard.setText(self.summary_text("\t"))
        notify_info("measurements copied to the clipboard")

    def _save_clicked(self) -> None:
        self.save_csv()

    def save_csv(self) -> list[Any]:
        """Ask for a folder and write one CSV per measure into it (asking before replacing files);
        returns the files written."""
        from napari_tomoseg.core.measure.measurements import csv_paths, write_csvs

        if self.result is None:
            notify_error("measure first: there is nothing to save")
            return []
        folder = choose_folder(self.native, "Folder for the CSV files")
        if folder is None:
            return []
        stem = re.sub(r"[^\w.-]+", "_", self.result.name).strip("._") or "labels"
        existing = [p for p in csv_paths(self.result, folder, stem).values() if p.exists()]
        if existing and not confirm_overwrite(self.native, existing):
            return []
        try:
            written = write_csvs(self.result, folder, stem=stem, overwrite=bool(existing))
        except OSError as err:
            notify_error(f"could not save the CSV files in {folder}: {err}")
            return []
        notify_info(f"saved {len(written)} CSV file(s) in {folder}")
        return written
