"""Evaluate dock widget: per-phase Jaccard, confusion matrix, grey-level baseline, phase fractions.

prediction + reference layer (annotations: held-out slices by default; or any labels layer, e.g. a
ground truth) -> :func:`iter_evaluate` in a worker (core.metrics, core.baseline, core.postprocess)
-> a table (copy / CSV), a confusion matrix, a per-slice fraction profile plot, an ``errors`` layer.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
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
    LayerCombo,
    geometry,
    layer_phases,
    notify_error,
    notify_info,
    session,
)
from napari_tomoseg._napari.export import (
    choose_output_path,
    layer_voxel_size,
    table_to_csv,
    write_text_atomic,
)
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import Cancelled, CancelToken

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

__all__ = ["EvaluateWidget", "Evaluation", "held_out_slices", "iter_evaluate"]

ERRORS_LAYER = "errors"
ERROR_COLOUR = "#ff0000"


@dataclass(frozen=True, eq=False)
class Evaluation:
    """What one evaluation found (arrays index phases 1..C as 0..C-1)."""

    phases: PhaseTable
    prediction_layer: str
    reference_layer: str
    region: str  # in words: "all annotated voxels", "held-out slices 3, 7 along z", ...
    confusion: npt.NDArray[np.int64]  # (C + 1, C + 1), rows reference, columns prediction
    jaccard: npt.NDArray[np.float64]
    mean_jaccard: float
    baseline_jaccard: npt.NDArray[np.float64] | None
    baseline_mean: float | None
    baseline_note: str
    prediction_fractions: npt.NDArray[np.float64]  # whole prediction (0 = outside, not counted)
    reference_fractions: npt.NDArray[np.float64]  # evaluated reference voxels
    prediction_voxels: npt.NDArray[np.int64]
    voxel_size: tuple[float, float, float] | None
    profile: npt.NDArray[np.float64]  # (z, C) fractions per slice of the prediction
    errors: npt.NDArray[np.uint8]  # 1 where an evaluated voxel is misclassified
    n_evaluated: int

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """The per-phase table (header, rows) shown in the widget and copied / saved as CSV."""
        header = ["phase", "Jaccard U-Net"]
        if self.baseline_jaccard is not None:
            header.append("Jaccard grey-level")
        header += ["fraction (prediction)", "fraction (reference)"]
        header.append("volume (µm³)" if self.voxel_size is not None else "volume (voxels)")
        rows: list[list[Any]] = []
        v = float(np.prod(self.voxel_size)) if self.voxel_size is not None else 1.0
        for i, name in enumerate(self.phases.names):
            row: list[Any] = [name, _num(self.jaccard[i])]
            if self.baseline_jaccard is not None:
                row.append(_num(self.baseline_jaccard[i]))
            row += [_num(self.prediction_fractions[i]), _num(self.reference_fractions[i])]
            row.append(_num(float(self.prediction_voxels[i]) * v))
            rows.append(row)
        mean: list[Any] = ["mean", _num(self.mean_jaccard)]
        if self.baseline_jaccard is not None:
            mean.append(_num(self.baseline_mean))
        rows.append(mean + [None] * (len(header) - len(mean)))
        return header, rows

    def to_json(self) -> dict[str, Any]:
        """For reports: scores, confusion matrix, fractions (NaN as null)."""
        names = self.phases.names
        return {
            "prediction": self.prediction_layer,
            "reference": self.reference_layer,
            "region": self.region,
            "evaluated_voxels": self.n_evaluated,
            "jaccard": {n: _num(self.jaccard[i]) for i, n in enumerate(names)},
            "mean_jaccard": _num(self.mean_jaccard),
            "grey_level_baseline": None
            if self.baseline_jaccard is None
            else {
                "note": self.baseline_note,
                "jaccard": {n: _num(self.baseline_jaccard[i]) for i, n in enumerate(names)},
                "mean_jaccard": _num(self.baseline_mean),
            },
            "confusion_matrix": {
                "rows": "reference phase",
                "columns": ["none", *names],
                "counts": {n: self.confusion[i + 1].tolist() for i, n in enumerate(names)},
            },
            "prediction_fractions": {
                n: _num(self.prediction_fractions[i]) for i, n in enumerate(names)
            },
        }


def _num(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return None if np.isnan(f) else f


def held_out_slices(viewer: Any, reference: Any) -> tuple[int, tuple[int, ...]] | None:
    """The validation slices the fine-tune widget held out of training, as ``(axis, indices)``.

    Read from the reference layer's ``metadata["tomoseg_validation_slices"]`` (``{"axis": a,
    "slices": [...]}``), else from the plan of the Fine-tune widget's last result when it trained on
    ``reference``, else the session's ``validation_slices`` attribute.
    """
    meta = getattr(reference, "metadata", None) or {}
    raw = meta.get("tomoseg_validation_slices")
    if raw is None:
        raw = _finetune_held_out(viewer, reference)
    if raw is None:
        s = session(viewer)
        raw = getattr(s, "validation_slices", None)
        layer_name = getattr(s, "validation_layer", None)
        if layer_name is not None and layer_name != reference.name:
            raw = None
    if not raw:
        return None
    if isinstance(raw, dict):
        axis, slices = int(raw.get("axis", 0)), tuple(int(i) for i in raw.get("slices", ()))
    else:
        axis, slices = 0, tuple(int(i) for i in raw)
    return (axis, slices) if slices else None


def _finetune_held_out(viewer: Any, reference: Any) -> dict[str, Any] | None:
    """The held-out slices of the Fine-tune widget's last run, if it trained on ``reference``."""
    ft = session(viewer).widgets.get("finetune")
    plan = getattr(getattr(ft, "result", None), "plan", None)
    if plan is None or not getattr(plan, "validation_slices", ()):
        return None
    combo = getattr(ft, "annotations", None)
    trained_on = combo.layer() if hasattr(combo, "layer") else None
    if trained_on is not reference:
        return None
    return {"axis": int(plan.axis), "slices": [int(i) for i in plan.validation_slices]}


def iter_evaluate(
    prediction: Any,
    reference: Any,
    phases: PhaseTable,
    *,
    image: Any = None,
    region: tuple[int, Sequence[int]] | None = None,
    exclude_outside: bool = True,
    voxel_size: tuple[float, float, float] | None = None,
    names: tuple[str, str] = ("prediction", "reference"),
    cancel: CancelToken | None = None,
) -> Generator[str, None, Evaluation]:
    """Score ``prediction`` against ``reference``; yields the name of each step as it starts.

    Parameters
    ----------
    prediction, reference : array of int, shape (z, y, x)
        Phase ids (0: outside the mask / not annotated).
    phases : PhaseTable
        The phases both use.
    image : array, optional
        The grey volume: enables the grey-level baseline. With ``region`` it is fitted on the
        reference outside the region (the training annotations) and scored inside; otherwise it is
        fitted on the reference itself, an upper bound for any threshold segmentation.
    region : (axis, slice indices), optional
        Score only these slices (the held-out validation slices).
    exclude_outside : bool
        Leave out voxels where the prediction is 0 (outside the segmentation mask).
    """
    pred = np.asarray(prediction)
    ref = np.asarray(reference)
    if pred.ndim != 3:
        raise ValueError(f"the prediction must be a 3D label volume, got shape {pred.shape}")
    if pred.shape != ref.shape:
        raise ValueError(
            f"{names[0]} {pred.shape} and {names[1]} {ref.shape} differ in shape; choose layers "
            "of the same volume"
        )
    from napari_tomoseg.core.measure.blobs import slice_fractions
    from napari_tomoseg.core.measure.metrics import (
        confusion_matrix,
        jaccard_from_confusion,
        mean_jaccard,
        phase_fractions,
    )

    n = len(phases)

    def check() -> None:
        if cancel is not None and cancel.cancelled:
            raise Cancelled("evaluation stopped")

    yield "comparing"
    check()
    keep = pred > 0 if exclude_outside else None
    region_text = "all annotated voxels"
    in_region = None
    if region is not None:
        axis, slices = region
        idx = [i for i in slices if 0 <= i < pred.shape[axis]]
        if not idx:
            raise ValueError(f"the held-out slices {list(slices)} lie outside the volume")
        in_region = np.zeros(pred.shape, dtype=bool)
        sl: list[Any] = [slice(None)] * 3
        sl[axis] = idx
        in_region[tuple(sl)] = True
        keep = in_region if keep is None else keep & in_region
        region_text = f"held-out slices {', '.join(map(str, idx))} along {'zyx'[axis]}"
    cm = confusion_matrix(pred, ref, n, mask=keep)
    if cm.sum() == 0:
        raise ValueError(
            f"the {names[1]} layer has no labelled voxel to compare with"
            + (" in the held-out slices" if region is not None else "")
            + "; annotate some voxels or choose another reference"
        )
    scores = jaccard_from_confusion(cm)
    evaluated = ref > 0
    if keep is not None:
        evaluated &= keep
    errors = (evaluated & (pred != ref)).astype(np.uint8)

    baseline = baseline_mean = None
    note = ""
    if image is not None:
        yield "grey-level baseline"
        check()
        from napari_tomoseg.core.measure.baseline import GreyLevelClassifier

        img = np.asarray(image)
        if img.shape != pred.shape:
            raise ValueError(
                f"the image {img.shape} and the prediction {pred.shape} differ in shape"
            )
        fit = ref if in_region is None else np.where(in_region, 0, ref)
        if not fit.any():
            note = "not computed: no annotated voxel outside the held-out slices to fit it on"
        else:
            grey = GreyLevelClassifier(n).fit(img, fit).predict(img)
            baseline = jaccard_from_confusion(confusion_matrix(grey, ref, n, mask=keep))
            baseline_mean = mean_jaccard(baseline)
            note = (
                "fitted on the reference itself: the best any grey-level threshold can do"
                if in_region is None
                else "fitted on the annotations outside the held-out slices"
            )

    yield "fractions"
    check()
    counts = np.bincount(pred.ravel().astype(np.int64), minlength=n + 1)[1 : n + 1]
    ref_eval = np.where(evaluated, ref, 0)
    result = Evaluation(
        phases=phases,
        prediction_layer=names[0],
        reference_layer=names[1],
        region=region_text,
        confusion=cm,
        jaccard=scores,
        mean_jaccard=mean_jaccard(scores),
        baseline_jaccard=baseline,
        baseline_mean=baseline_mean,
        baseline_note=note,
        prediction_fractions=phase_fractions(pred, n),
        reference_fractions=phase_fractions(ref_eval, n),
        prediction_voxels=counts.astype(np.int64),
        voxel_size=voxel_size,
        profile=slice_fractions(pred, n, axis=0),
        errors=errors,
        n_evaluated=int(cm.sum()),
    )
    return result


class EvaluateWidget(QWidget):
    """Per-phase Jaccard of a prediction against annotations or a ground truth, and fractions."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result: Evaluation | None = None
        self.runner = JobRunner("Evaluating")

        self.prediction_combo = LayerCombo(napari_viewer, "labels")
        self.reference_combo = LayerCombo(napari_viewer, "labels")
        self.image_combo = LayerCombo(napari_viewer, "image", optional=True)
        self.image_combo.setToolTip("The grey volume, for the grey-level baseline column")
        self.held_out_check = QCheckBox("Held-out slices only")
        self.held_out_check.setToolTip(
            "Score only the annotated slices the fine-tune widget kept out of training"
        )
        self.exclude_check = QCheckBox("Leave out voxels outside the mask (prediction = 0)")
        self.exclude_check.setChecked(True)
        self.controls = JobControls(self.runner, "Evaluate")
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, 0)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.confusion_table = QTableWidget(0, 0)
        self.confusion_table.setToolTip(
            "Voxels by reference phase (rows) and predicted phase (columns)"
        )
        self.copy_button = QPushButton("Copy table")
        self.save_button = QPushButton("Save CSV…")
        for b in (self.copy_button, self.save_button):
            b.setEnabled(False)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.4), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)

        form = QFormLayout()
        form.addRow("Prediction", self.prediction_combo)
        form.addRow("Reference", self.reference_combo)
        form.addRow("Image (baseline)", self.image_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.held_out_check)
        layout.addWidget(self.exclude_check)
        layout.addWidget(self.controls)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        buttons = QHBoxLayout()
        buttons.addWidget(self.copy_button)
        buttons.addWidget(self.save_button)
        layout.addLayout(buttons)
        layout.addWidget(QLabel("Confusion matrix (rows: reference, columns: prediction)"))
        layout.addWidget(self.confusion_table)
        layout.addWidget(QLabel("Phase fractions per slice"))
        layout.addWidget(self.canvas)

        self._choose_defaults()
        self.reference_combo.currentTextChanged.connect(self._update_held_out)
        napari_viewer.layers.events.inserted.connect(self._on_layers_changed)
        # A finished fine-tuning run adds a model and records its held-out slices.
        session(napari_viewer).events.models_changed.connect(self._on_models_changed)
        self.controls.run_button.clicked.connect(self.run)
        self.copy_button.clicked.connect(self.copy_table)
        self.save_button.clicked.connect(self.save_csv)
        self._update_held_out()
        session(napari_viewer).widgets["evaluate"] = self

    # ----------------------------------------------------------------------------------------
    def _choose_defaults(self) -> None:
        names = [ly.name for ly in self.viewer.layers]
        if "prediction" in names:
            self.prediction_combo.set_layer("prediction")
        for ref in ("annotations", "ground truth"):
            if ref in names:
                self.reference_combo.set_layer(ref)
                break

    def _on_layers_changed(self, event: Any = None) -> None:
        """A new ``prediction`` or ``annotations`` layer becomes the default choice, unless the
        user has chosen another layer already (other insertions, e.g. ``errors``, change nothing)."""
        name = getattr(getattr(event, "value", None), "name", None)
        try:
            if name == "prediction":
                self.prediction_combo.set_layer(name)
            elif name in ("annotations", "ground truth") and self.reference_combo.layer() in (
                None,
                self.prediction_combo.layer(),
            ):
                self.reference_combo.set_layer(name)
            self._update_held_out()
        except RuntimeError:  # the widget was closed
            self.viewer.layers.events.inserted.disconnect(self._on_layers_changed)

    def _on_models_changed(self) -> None:
        try:
            self._update_held_out()
        except RuntimeError:  # the widget was closed
            session(self.viewer).events.models_changed.disconnect(self._on_models_changed)

    def _update_held_out(self, *_: Any) -> None:
        ref = self.reference_combo.layer()
        found = held_out_slices(self.viewer, ref) if ref is not None else None
        self.held_out_check.setEnabled(found is not None)
        self.held_out_check.setChecked(found is not None)
        if found is not None:
            axis, slices = found
            self.held_out_check.setText(
                f"Held-out slices only ({', '.join(map(str, slices))} along {'zyx'[axis]})"
            )
        else:
            self.held_out_check.setText(
                "Held-out slices only (none recorded: all annotated voxels)"
            )

    def run(self) -> None:
        """Start an evaluation in a worker with the chosen layers."""
        try:
            pred_layer = self.prediction_combo.layer()
            ref_layer = self.reference_combo.layer()
            if pred_layer is None:
                raise ValueError("no prediction layer: segment the volume first (Segment widget)")
            if ref_layer is None:
                raise ValueError(
                    "no reference layer: annotate some slices or open a ground truth first"
                )
            if ref_layer is pred_layer:
                raise ValueError("the prediction and the reference are the same layer; choose two")
            pred, ref = pred_layer.data, ref_layer.data
            if tuple(pred.shape) != tuple(ref.shape):
                raise ValueError(
                    f"prediction {tuple(pred.shape)} and reference {tuple(ref.shape)} differ in "
                    "shape; choose layers of the same volume"
                )
            image_layer = self.image_combo.layer()
            image = None
            if image_layer is not None:
                if getattr(image_layer, "rgb", False) or tuple(image_layer.data.shape) != tuple(
                    pred.shape
                ):
                    raise ValueError(
                        f"image {image_layer.name!r} {tuple(image_layer.data.shape)} does not match the "
                        f"prediction {tuple(pred.shape)}; choose the segmented volume or (none)"
                    )
                image = image_layer.data
            phases = (
                layer_phases(pred_layer) or layer_phases(ref_layer) or session(self.viewer).phases
            )
            region = (
                held_out_slices(self.viewer, ref_layer)
                if self.held_out_check.isChecked() and self.held_out_check.isEnabled()
                else None
            )
        except ValueError as err:
            notify_error(str(err))
            self.controls.status.setText(str(err))
            return
        exclude = self.exclude_check.isChecked()
        voxel = layer_voxel_size(pred_layer)
        names = (pred_layer.name, ref_layer.name)
        steps = ["comparing", "grey-level baseline", "fractions"]
        self.controls.status.setText("Evaluating…")
        self.runner.start(
            lambda token: iter_evaluate(
                pred,
                ref,
                phases,
                image=image,
                region=region,
                exclude_outside=exclude,
                voxel_size=voxel,
                names=names,
                cancel=token,
            ),
            on_return=self._show,
            on_error=lambda err: self.controls.status.setText(f"Evaluation failed: {err}"),
            on_stopped=lambda: self.controls.status.setText("Evaluation stopped."),
            total=len(steps),
            describe=lambda step: (steps.index(step) if step in steps else None, step),
        )

    # ----------------------------------------------------------------------------------------
    def _show(self, result: Evaluation) -> None:
        self.result = result
        header, rows = result.table()
        self.table.clear()
        self.table.setColumnCount(len(header))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels(header)
        for r, row in enumerate(rows):
            for c, v in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(_cell(v, header[c])))
        names = result.phases.names
        self.confusion_table.clear()
        self.confusion_table.setRowCount(len(names))
        self.confusion_table.setColumnCount(len(names) + 1)
        self.confusion_table.setHorizontalHeaderLabels(["none", *names])
        self.confusion_table.setVerticalHeaderLabels(list(names))
        for i in range(len(names)):
            for j in range(len(names) + 1):
                self.confusion_table.setItem(
                    i, j, QTableWidgetItem(str(int(result.confusion[i + 1, j])))
                )
        self._plot_profile(result)
        self._show_errors(result)
        baseline = (
            f" Grey-level baseline: {_cell(result.baseline_mean, 'J')} ({result.baseline_note})."
            if result.baseline_note
            else ""
        )
        self.summary.setText(
            f"Mean Jaccard {_cell(result.mean_jaccard, 'J')} of {result.prediction_layer!r} against "
            f"{result.reference_layer!r} on {result.n_evaluated:,} voxels ({result.region}).{baseline}"
        )
        self.controls.status.setText("Done.")
        for b in (self.copy_button, self.save_button):
            b.setEnabled(True)

    def _plot_profile(self, result: Evaluation) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        z = np.arange(result.profile.shape[0], dtype=np.float64)
        xlabel = "slice (z)"
        if result.voxel_size is not None:
            z = z * result.voxel_size[0]
            xlabel = "z (µm)"
        for i, p in enumerate(result.phases.phases):
            ax.plot(z, 100 * result.profile[:, i], color=p.colour, label=p.name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction (%)")
        ax.legend(fontsize="small", loc="best")
        self.canvas.draw_idle()

    def _show_errors(self, result: Evaluation) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        like = (
            self.viewer.layers[result.prediction_layer]
            if result.prediction_layer in self.viewer.layers
            else None
        )
        where = geometry(like)
        cmap = DirectLabelColormap(
            color_dict={None: "transparent", 0: "transparent", 1: ERROR_COLOUR}
        )
        if (
            ERRORS_LAYER in self.viewer.layers
            and self.viewer.layers[ERRORS_LAYER]._type_string == "labels"
        ):
            layer = self.viewer.layers[ERRORS_LAYER]
            layer.data = result.errors
            for k, v in where.items():
                setattr(layer, k, v)
        else:
            layer = self.viewer.add_labels(result.errors, name=ERRORS_LAYER, opacity=0.8, **where)
        layer.colormap = cmap
        layer.features = {"index": [0, 1], "error": ["", "misclassified"]}

    # ----------------------------------------------------------------------------------------
    def table_text(self, delimiter: str = "\t") -> str:
        """The table as text (tab-separated for the clipboard, CSV for files)."""
        if self.result is None:
            return ""
        header, rows = self.result.table()
        return table_to_csv(header, rows, delimiter=delimiter)

    def copy_table(self) -> None:
        if self.result is None:
            notify_error("evaluate first: there is no table to copy")
            return
        QApplication.clipboard().setText(self.table_text("\t"))
        notify_info("Jaccard table copied to the clipboard")

    def save_csv(self) -> None:
        if self.result is None:
            notify_error("evaluate first: there is no table to save")
            return
        path = choose_output_path(self, "Save the table", "evaluation.csv", "CSV (*.csv)")
        if path is None:
            return
        try:
            write_text_atomic(path, self.table_text(","))
        except OSError as err:
            notify_error(f"could not save {path}: {err}")
            return
        notify_info(f"saved {path}")


def _cell(v: Any, column: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if "volume" in column:
        return f"{v:.4g}"
    if "fraction" in column:
        return f"{100 * v:.2f} %"
    return f"{v:.4f}"
