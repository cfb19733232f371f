"""Export dock widget: a labels layer as a label TIFF (phase names inside), probability maps, a report.

labels layer -> checks and "Replace?" questions (Qt thread) -> worker: core ``write_labels`` (uint8,
phase table and voxel size in the metadata), probabilities, core ``build_report`` with the viewer's last
evaluation of this layer and the model's provenance -> JSON and CSV next to the labels.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, LineEdit, PushButton

from napari_tomoseg._napari.docking import tabify_docks
from napari_tomoseg._napari.jobs import JobRunner
from napari_tomoseg._napari.layers import LayerPicker, is_segmentation, layer_phases
from napari_tomoseg._napari.notify import describe_error, notify_error, notify_info
from napari_tomoseg._napari.outputs import (
    VoxelSizeField,
    check_not_source,
    choose_output_path,
    confirm_overwrite,
    write_text_atomic,
)
from napari_tomoseg._napari.state import state_for

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

__all__ = ["ExportWidget"]

#: Layers the widgets make to show something: not worth exporting by default.
_SHOWN_ONLY = ("errors", "blob selection")


class ExportWidget(Container):
    """Write a labels layer as a label TIFF with its phase names, optional probabilities, a report."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.runner = JobRunner("Exporting")
        self._confirmed: Path | None = None  # the label file the Browse dialog already asked about

        self.labels_layer = LayerPicker(
            napari_viewer,
            "labels",
            label="Labels layer",
            tooltip="The labels layer to export (e.g. the prediction)",
            prefer=("prediction",),
            prefer_if=is_segmentation,  # a segmentation renamed, or several: the newest
            avoid=("ground truth", *_SHOWN_ONLY),
        )
        self.voxel_size = VoxelSizeField(
            tooltip="Written into the label file, the probabilities and the report: the layer's "
            "voxel size (z, y, x), or what you write here (one number or z,y,x with a unit, µm "
            "when none); empty: unknown, lengths in voxels"
        )
        self.write_probabilities = CheckBox(text="Probabilities", value=False)
        self.write_probabilities.tooltip = (
            "Also write probability maps (an image layer of shape (C, z, y, x)) as a float32 TIFF"
        )
        self.probabilities = LayerPicker(
            napari_viewer,
            "image",
            label="Probabilities",
            optional=True,
            accept=self._matches_labels,
        )
        self.report_check = CheckBox(
            text="Write a report (JSON and CSV next to the labels)", value=True
        )
        self.path = LineEdit(label="File", value="")
        self.path.native.setPlaceholderText("choose a .tif file…")
        self.browse_button = PushButton(text="Browse…")
        self.export_button = PushButton(text="Export")
        self.status = Label(value="")
        self.status.native.setWordWrap(True)

        path_widgets: list[Any] = [self.path, self.browse_button]
        path_row = Container(widgets=path_widgets, layout="horizontal", labels=False, label="File")
        path_row.margins = (0, 0, 0, 0)
        probs_row = Container(
            widgets=[self.write_probabilities, self.probabilities],
            layout="horizontal",
            labels=False,
            label="Probabilities",
        )
        probs_row.margins = (0, 0, 0, 0)
        form = Container(widgets=[self.labels_layer, self.voxel_size, probs_row, path_row])
        form.margins = (0, 0, 0, 0)
        super().__init__(
            widgets=[form, self.report_check, self.export_button, self.status], labels=False
        )
        tabify_docks(self)

        self.labels_layer.changed.connect(self.probabilities.refresh)
        self.labels_layer.changed.connect(self._show_voxel_size)
        self._show_voxel_size()
        self.browse_button.changed.connect(self._browse)
        self.export_button.changed.connect(self._export_clicked)
        self.runner.on_state(
            lambda s: setattr(self.export_button, "enabled", not self.runner.running)
        )

    # ----------------------------------------------------------------------------------------
    def _show_voxel_size(self, *_: Any) -> None:
        """Show the chosen layer's voxel size (empty when unknown)."""
        self.voxel_size.follow(self.labels_layer.layer)

    def _matches_labels(self, layer: Any) -> bool:
        """Probability maps of the chosen labels: (C, z, y, x) over the same voxels."""
        labels = getattr(self, "labels_layer", None)
        chosen = labels.layer if labels is not None else None
        return (
            layer.ndim == 4
            and not getattr(layer, "rgb", False)
            and (chosen is None or tuple(layer.data.shape[-3:]) == tuple(chosen.data.shape))
        )

    def _browse(self) -> None:
        layer = self.labels_layer.layer
        suggested = f"{layer.name if layer is not None else 'labels'}.tif"
        path = choose_output_path(self.native, "Export labels", suggested, "TIFF (*.tif *.tiff)")
        if path is not None:
            if path.suffix.lower() not in (".tif", ".tiff"):
                path = path.with_name(path.name + ".tif")
            self.path.value = str(path)
            self._confirmed = path

    def outputs(self, path: Path) -> list[Path]:
        """The files an export to ``path`` writes, with the current options."""
        stem = path.with_suffix("")
        out = [path]
        if self.write_probabilities.value and self.probabilities.layer is not None:
            out.append(stem.with_name(stem.name + "-probabilities.tif"))
        if self.report_check.value:
            out += [
                stem.with_name(stem.name + "-report.json"),
                stem.with_name(stem.name + "-report.csv"),
            ]
        return out

    def _export_clicked(self) -> None:
        self.export()

    def export(self) -> bool:
        """Check the choices, ask before replacing files, then write them in a worker.

        Returns True when the writing started (the runner's state says how it ended)."""
        from napari_tomoseg.core import io

        try:
            layer = self.labels_layer.layer
            if layer is None:
                raise ValueError("no labels layer to export: segment or open labels first")
            text = str(self.path.value).strip()
            if not text:
                raise ValueError("choose an output file first (Browse…)")
            path = Path(text).expanduser()
            if path.suffix.lower() not in (".tif", ".tiff"):
                raise ValueError(f"{path.name}: the label file must end in .tif or .tiff")
            if layer.data.ndim != 3:
                raise ValueError(
                    f"layer {layer.name!r} has shape {tuple(layer.data.shape)}; a 3D label "
                    "volume is needed"
                )
            voxel = self.voxel_size.voxel_size(layer)
            phases = layer_phases(layer) or self.state.phases
            probs_layer = self.probabilities.layer if self.write_probabilities.value else None
            if probs_layer is not None and tuple(probs_layer.data.shape[-3:]) != tuple(
                layer.data.shape
            ):
                raise ValueError(
                    f"the probabilities {tuple(probs_layer.data.shape)} do not match the labels "
                    f"{tuple(layer.data.shape)}; choose the probabilities of this prediction"
                )
            targets = self.outputs(path)
            for target in targets:  # before any question: the volume is never written over
                check_not_source(target, list(self.viewer.layers))
            existing = [p for p in targets if p.exists()]
            # The Browse dialog asked about the label file itself already.
            if existing and not (existing == [path] and self._confirmed == path):
                if not confirm_overwrite(self.native, existing):
                    self.status.value = "Export cancelled: nothing was written."
                    return False
            io.check_output_path(path, overwrite=bool(existing))
        except (ValueError, OSError) as err:
            notify_error(f"Export failed: {describe_error(err)}")
            self.status.value = f"Export failed: {describe_error(err)}"
            return False
        finally:
            self._confirmed = None

        evaluation = self._evaluation_of(layer)
        model_name, provenance = _model_info(layer, self.state)
        labels, probs = layer.data, None if probs_layer is None else probs_layer.data
        report = bool(self.report_check.value)
        name = layer.name

        def job(token: Any) -> Generator[None, None, list[Path]]:
            from napari_tomoseg.core.measure.report import build_report, report_csv

            yield from ()
            data = np.asarray(labels)
            top = int(data.max()) if data.size else 0
            if top > len(phases):
                raise ValueError(
                    f"layer {name!r} holds id {top} but the phase table has {len(phases)} "
                    f"phases ({', '.join(phases.names)}); fix the labels or the phase table first"
                )
            written = [
                io.write_labels(
                    path, data, phases=phases, voxel_size=voxel, overwrite=path in existing
                )
            ]
            if probs is not None:
                written.append(
                    _write_probabilities(
                        targets[1],
                        np.asarray(probs, dtype=np.float32),
                        voxel,
                        targets[1] in existing,
                    )
                )
            if report:
                content = build_report(
                    data,
                    phases,
                    voxel_size=voxel,
                    name=name,
                    evaluation=evaluation,
                    model_provenance=provenance,
                    model_name=model_name,
                )
                json_path, csv_path = targets[-2], targets[-1]
                write_text_atomic(json_path, json.dumps(content, indent=2, default=str))
                write_text_atomic(csv_path, report_csv(content))
                written += [json_path, csv_path]
            return written

        def done(written: list[Path]) -> None:
            names = ", ".join(p.name for p in written)
            self.status.value = f"Wrote {names} in {path.parent}"
            notify_info(f"Exported {name!r}: {names}")

        self.status.value = f"Exporting {name!r}…"
        self.runner.start(
            job,
            on_return=done,
            on_error=lambda err: setattr(
                self.status, "value", f"Export failed: {describe_error(err)}"
            ),
        )
        return True

    def _evaluation_of(self, layer: Any) -> Any:
        """The viewer's last evaluation, if it scored this layer."""
        last = self.state.last_evaluation
        if last is not None and getattr(last, "prediction_name", None) == layer.name:
            return last
        return None


def _model_info(layer: Any, state: Any) -> tuple[str | None, dict[str, Any] | None]:
    """Name and provenance of the model that made ``layer``, as the segment widget recorded them
    (``metadata["tomoseg_model"]`` / ``["tomoseg_provenance"]``, or a model kept in the viewer)."""
    meta = getattr(layer, "metadata", None) or {}
    name = meta.get("tomoseg_model")
    provenance = meta.get("tomoseg_provenance") or meta.get("tomoseg_model_provenance")
    if provenance is None and name is not None and name in state.models:
        provenance = getattr(state.models[name], "provenance", None)
    return (str(name) if name is not None else None), provenance


def _write_probabilities(
    path: Path, probs: np.ndarray, voxel: tuple[float, float, float] | None, overwrite: bool
) -> Path:
    """Probability maps (C, z, y, x) as a float32 TIFF written through a temporary file."""
    import tifffile

    from napari_tomoseg.core import io
    from napari_tomoseg.core.io.write import atomic_output

    path = io.check_output_path(path, overwrite=overwrite)
    meta: dict[str, Any] = {"axes": "CZYX"}
    if voxel is not None:
        meta["voxel_size_um"] = list(voxel)
    with atomic_output(path, overwrite=overwrite, folder=False) as tmp:
        tifffile.imwrite(tmp, probs, compression="zlib", metadata=meta)
    return path
