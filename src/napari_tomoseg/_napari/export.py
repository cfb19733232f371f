"""Export dock widget: a labels layer as a label TIFF (phase names inside), probability maps, a report.

layer -> :func:`napari_tomoseg.core.io.write_labels` (uint8, phase table and voxel size in the
metadata) -> file; the last evaluation and the model's provenance -> a JSON or CSV report.
Existing files are replaced only after the user says so in a dialog.

Also holds the small file helpers the evaluate and clean-up widgets share (save dialogs that ask
before overwriting, atomic text writes, the voxel size of a layer).
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_tomoseg import __version__
from napari_tomoseg._napari._common import (
    LayerCombo,
    describe_error,
    layer_phases,
    notify_error,
    notify_info,
    session,
)
from napari_tomoseg._napari.writer import voxel_size_um
from napari_tomoseg.core.phases import PhaseTable

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

__all__ = [
    "ExportWidget",
    "build_report",
    "choose_output_path",
    "layer_voxel_size",
    "write_text_atomic",
]


# --------------------------------------------------------------------------------------------
# helpers shared by the evaluate, clean-up and export widgets


def layer_voxel_size(layer: Any) -> tuple[float, float, float] | None:
    """The voxel size ``(z, y, x)`` in µm of a 3D layer, or None if unknown (see
    :func:`~napari_tomoseg._napari.writer.voxel_size_um`)."""
    return voxel_size_um(getattr(layer, "scale", ()), getattr(layer, "units", None))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: a failed write leaves no half file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def choose_output_path(
    parent: QWidget | None, caption: str, suggested: str, file_filter: str
) -> Path | None:
    """Ask for an output file; if it exists, ask again before it may be replaced.

    Returns None when the user cancels either dialog. The native dialog's own overwrite question
    is switched off so that the question is always ours (and testable).
    """
    name, _ = QFileDialog.getSaveFileName(
        parent,
        caption,
        suggested,
        file_filter,
        options=QFileDialog.Option.DontConfirmOverwrite,
    )
    if not name:
        return None
    path = Path(name)
    if path.exists() and not confirm_overwrite(parent, path):
        return None
    return path


def confirm_overwrite(parent: QWidget | None, paths: Path | Sequence[Path]) -> bool:
    """Ask whether the existing file(s) ``paths`` may be replaced (default: no)."""
    items = [paths] if isinstance(paths, Path) else list(paths)
    what = (
        f"{items[0]} exists"
        if len(items) == 1
        else "These files exist: " + ", ".join(map(str, items))
    )
    answer = QMessageBox.question(
        parent,
        "Replace file?",
        f"{what}. Replace {'it' if len(items) == 1 else 'them'}?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
        QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


def table_to_csv(header: Sequence[str], rows: Sequence[Sequence[Any]], delimiter: str = ",") -> str:
    buf = _stdio.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------------------------
# report


def build_report(
    labels: Any,
    phases: PhaseTable,
    *,
    voxel_size: tuple[float, float, float] | None,
    layer_name: str,
    evaluation: Any = None,
    model_provenance: dict[str, Any] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The export report: phase fractions and volumes, per-phase Jaccard of the last evaluation
    (when it was of this layer), the model's provenance, software versions."""
    from napari_tomoseg.core.measure.blobs import phase_statistics

    stats = phase_statistics(labels, phases, voxel_size=voxel_size)
    report: dict[str, Any] = {
        "software": f"napari-tomoseg {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "layer": layer_name,
        "shape": [int(s) for s in np.shape(labels)],
        "voxel_size_um": list(voxel_size) if voxel_size is not None else None,
        "phases": [
            {
                "id": s.id,
                "name": s.name,
                "colour": phases.phases[s.id - 1].colour,
                "voxels": s.voxels,
                "fraction": _finite(float(s.fraction)),
                "volume_um3": s.volume_um3,
            }
            for s in stats
        ],
    }
    if evaluation is not None:
        report["evaluation"] = evaluation.to_json()
        for entry in report["phases"]:
            j = evaluation.jaccard[entry["id"] - 1]
            entry["jaccard"] = None if np.isnan(j) else float(j)
    if model_provenance is not None or model_name is not None:
        report["model"] = {"name": model_name, "provenance": model_provenance}
    return report


def report_csv(report: dict[str, Any]) -> str:
    """The per-phase part of a report as CSV (one row per phase, then the mean Jaccard)."""
    header = ["phase_id", "phase", "voxels", "fraction", "volume_um3", "jaccard"]
    rows = [
        [p["id"], p["name"], p["voxels"], p["fraction"], p["volume_um3"], p.get("jaccard")]
        for p in report["phases"]
    ]
    if "evaluation" in report:
        rows.append(["", "mean", "", "", "", report["evaluation"]["mean_jaccard"]])
    return table_to_csv(header, rows)


# --------------------------------------------------------------------------------------------
# widget


class ExportWidget(QWidget):
    """Write a labels layer as a label TIFF with its phase names, optional probabilities, a report."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.layer_combo = LayerCombo(napari_viewer, "labels")
        self.layer_combo.setToolTip("The labels layer to export (e.g. the prediction)")
        self.probabilities_combo = LayerCombo(
            napari_viewer, "image", optional=True, accept=_is_probability_layer
        )
        self.probabilities_combo.setToolTip(
            "Optional probability maps (an image layer of shape (C, z, y, x)) written as float32 TIFF"
        )
        self.report_check = QCheckBox("Write a report (JSON and CSV next to the labels)")
        self.report_check.setChecked(True)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("choose a .tif file…")
        self.browse_button = QPushButton("Browse…")
        self.export_button = QPushButton("Export")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._confirmed: Path | None = None  # the label file the Browse dialog already asked about

        form = QFormLayout()
        form.addRow("Labels layer", self.layer_combo)
        form.addRow("Probabilities", self.probabilities_combo)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit)
        path_row.addWidget(self.browse_button)
        form.addRow("File", path_row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.report_check)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.browse_button.clicked.connect(self._browse)
        self.export_button.clicked.connect(self.export)
        session(napari_viewer).widgets["export"] = self

    # ----------------------------------------------------------------------------------------
    def _browse(self) -> None:
        layer = self.layer_combo.layer()
        suggested = f"{layer.name if layer is not None else 'labels'}.tif"
        path = choose_output_path(self, "Export labels", suggested, "TIFF (*.tif *.tiff)")
        if path is not None:
            if path.suffix.lower() not in (".tif", ".tiff"):
                path = path.with_name(path.name + ".tif")
            self.path_edit.setText(str(path))
            self._confirmed = path

    def outputs(self, path: Path) -> list[Path]:
        """The files an export to ``path`` writes, with the current options."""
        stem = path.with_suffix("")
        out = [path]
        if self.probabilities_combo.layer() is not None:
            out.append(stem.with_name(stem.name + "-probabilities.tif"))
        if self.report_check.isChecked():
            out += [
                stem.with_name(stem.name + "-report.json"),
                stem.with_name(stem.name + "-report.csv"),
            ]
        return out

    def export(self) -> bool:
        """Write the chosen files; returns True when everything was written."""
        from napari_tomoseg.core import io

        try:
            layer = self.layer_combo.layer()
            if layer is None:
                raise ValueError("no labels layer to export: segment or open labels first")
            text = self.path_edit.text().strip()
            if not text:
                raise ValueError("choose an output file first (Browse…)")
            path = Path(text).expanduser()
            if path.suffix.lower() not in (".tif", ".tiff"):
                raise ValueError(f"{path.name}: the label file must end in .tif or .tiff")
            data = np.asarray(layer.data)
            if data.ndim != 3:
                raise ValueError(
                    f"layer {layer.name!r} has shape {data.shape}; a 3D label volume is needed"
                )
            phases = layer_phases(layer) or session(self.viewer).phases
            top = int(data.max()) if data.size else 0
            if top > len(phases):
                raise ValueError(
                    f"layer {layer.name!r} holds id {top} but the phase table has {len(phases)} "
                    f"phases ({', '.join(phases.names)}); fix the labels or the phase table first"
                )
            probs_layer = self.probabilities_combo.layer()
            if probs_layer is not None and tuple(probs_layer.data.shape[-3:]) != data.shape:
                raise ValueError(
                    f"the probabilities {tuple(probs_layer.data.shape)} do not match the labels "
                    f"{data.shape}; choose the probabilities of this prediction"
                )
            targets = self.outputs(path)
            existing = [p for p in targets if p.exists()]
            confirmed = self._confirmed
            if existing and not (
                existing == [path] and confirmed == path
            ):  # Browse asked about the label file itself already
                if not confirm_overwrite(self, existing):
                    self.status.setText("Export cancelled: nothing was written.")
                    return False
            overwrite = bool(existing)
            voxel = layer_voxel_size(layer)
            io.check_output_path(path, overwrite=overwrite)
            written = [
                io.write_labels(
                    path, data, phases=phases, voxel_size=voxel, overwrite=path in existing
                )
            ]
            if probs_layer is not None:
                probs = np.asarray(probs_layer.data, dtype=np.float32)
                written.append(
                    _write_probabilities(targets[1], probs, voxel, targets[1] in existing)
                )
            if self.report_check.isChecked():
                report = self._report(layer, data, phases, voxel)
                json_path, csv_path = targets[-2], targets[-1]
                write_text_atomic(json_path, json.dumps(report, indent=2, default=str))
                write_text_atomic(csv_path, report_csv(report))
                written += [json_path, csv_path]
        except (ValueError, OSError) as err:
            notify_error(f"Export failed: {describe_error(err)}")
            self.status.setText(f"Export failed: {describe_error(err)}")
            return False
        finally:
            self._confirmed = None
        names = ", ".join(p.name for p in written)
        self.status.setText(f"Wrote {names} in {path.parent}")
        notify_info(f"Exported {layer.name!r}: {names}")
        return True

    def _report(self, layer: Any, data: Any, phases: PhaseTable, voxel: Any) -> dict[str, Any]:
        s = session(self.viewer)
        evaluation = None
        ev_widget = s.widgets.get("evaluate")
        last = getattr(ev_widget, "result", None)
        if last is not None and last.prediction_layer == layer.name:
            evaluation = last
        name, provenance = _model_info(layer, s)
        return build_report(
            data,
            phases,
            voxel_size=voxel,
            layer_name=layer.name,
            evaluation=evaluation,
            model_provenance=provenance,
            model_name=name,
        )


def _model_info(layer: Any, s: Any) -> tuple[str | None, dict[str, Any] | None]:
    """Name and provenance of the model that made ``layer``, as the segment widget recorded them
    (``metadata["tomoseg_model"]`` / ``["tomoseg_provenance"]``, or a model in the session)."""
    meta = getattr(layer, "metadata", None) or {}
    name = meta.get("tomoseg_model")
    provenance = meta.get("tomoseg_provenance") or meta.get("tomoseg_model_provenance")
    if provenance is None and name is not None and name in s.models:
        provenance = getattr(s.models[name], "provenance", None)
    return (str(name) if name is not None else None), provenance


def _is_probability_layer(layer: Any) -> bool:
    return getattr(layer, "ndim", 0) == 4 and not getattr(layer, "rgb", False)


def _write_probabilities(
    path: Path, probs: np.ndarray, voxel: tuple[float, float, float] | None, overwrite: bool
) -> Path:
    """Probability maps (C, z, y, x) as a float32 TIFF written through a temporary file."""
    import tifffile

    from napari_tomoseg.core import io

    path = io.check_output_path(path, overwrite=overwrite)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.tif")
    try:
        meta: dict[str, Any] = {"axes": "CZYX"}
        if voxel is not None:
            meta["voxel_size_um"] = list(voxel)
        tifffile.imwrite(tmp, probs, compression="zlib", metadata=meta)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
