"""Evaluate dock widget: per-phase Jaccard, confusion matrix, grey-level baseline, phase fractions.

prediction + reference layer (annotations: the voxels the last fine-tuning held out, by default; or
any labels layer, e.g. a ground truth) -> core :func:`~napari_tomoseg.core.measure.evaluate.
iter_evaluate` in a worker -> tables (copy / CSV), a per-slice fraction profile, an ``errors`` layer
-> the viewer's state (``last_evaluation``, read by the Export widget's report).
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, Container, Label, PushButton
from qtpy.QtWidgets import QApplication

from napari_tomoseg._napari.docking import tabify_docks
from napari_tomoseg._napari.jobs import JobControls, JobRunner
from napari_tomoseg._napari.layers import LayerPicker, layer_phases, upsert_labels
from napari_tomoseg._napari.notify import notify_error, notify_info, notify_warning
from napari_tomoseg._napari.outputs import choose_output_path, layer_voxel_size, write_text_atomic
from napari_tomoseg._napari.plots import apply_theme, follow_theme, theme_colours
from napari_tomoseg._napari.state import HELD_OUT_KEY, state_for
from napari_tomoseg._napari.tables import ResultTable
from napari_tomoseg.core.measure.evaluate import Evaluation, EvaluationProgress
from napari_tomoseg.core.measure.report import format_cell, table_to_csv, trained_on_warning
from napari_tomoseg.core.progress import CancelToken

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

__all__ = ["ERRORS_LAYER", "EvaluateWidget", "HeldOut", "ProfilePlot", "held_out"]

ERRORS_LAYER = "errors"
ERROR_COLOUR = "#ff0000"
#: Headers of the per-phase table as shown in the dock (the full names are in their tooltips).
SHORT_HEADERS = {
    "Jaccard U-Net": "Jaccard",
    "Jaccard grey-level": "grey-level",
    "fraction (prediction)": "pred. %",
    "fraction (reference)": "ref. %",
    "volume (µm³)": "µm³",
    "volume (voxels)": "voxels",
}
#: Layers the widgets make to show something; never a prediction or a reference.
_SHOWN_ONLY = (ERRORS_LAYER, "blob selection")


@dataclass(frozen=True)
class HeldOut:
    """What a fine-tuning run kept out of training in a reference, and what it trained on.

    ``record`` is the core's record of the held-out voxels (see :func:`~napari_tomoseg.core.learn.
    finetune.held_out_voxels`), None when the run held nothing out; ``train_slices`` are the slices
    along ``axis`` it trained on (in a band run, every annotated slice outside its band); ``model``
    is the name of the model it made, when known.
    """

    axis: int
    train_slices: tuple[int, ...]
    record: dict[str, Any] | None = None
    model: str | None = None

    @property
    def slices(self) -> tuple[int, ...]:
        """The held-out slices along :attr:`axis` (none when nothing was held out)."""
        return tuple(int(i) for i in self.record["slices"]) if self.record else ()

    @property
    def band(self) -> bool:
        """True when a band of each held-out slice was held out, rather than whole slices."""
        return self.record is not None and self.record.get("kind") == "band"

    def describe(self) -> str:
        where = f"{', '.join(map(str, self.slices))} along {'zyx'[self.axis]}"
        return f"bands of slices {where}" if self.band else f"slices {where}"

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """The held-out voxels (annotated or not) in a volume of ``shape``; ValueError if the
        record does not fit it."""
        from napari_tomoseg.core.learn.finetune import held_out_mask

        if self.record is None:
            return np.zeros(shape, dtype=bool)
        return held_out_mask(self.record, shape)

    def trained_on(self, shape: tuple[int, ...]) -> np.ndarray:
        """The voxels of the trained slices outside the held-out ones (annotated or not)."""
        out = np.zeros(shape, dtype=bool)
        key: list[Any] = [slice(None)] * 3
        key[self.axis] = [i for i in self.train_slices if 0 <= i < shape[self.axis]]
        out[tuple(key)] = True
        if self.record is not None:
            out &= ~self.mask(shape)
        return out


def held_out(state: Any, reference: Any) -> HeldOut | None:
    """What a fine-tuning run held out of ``reference`` (a labels layer), or None.

    Read from the layer's ``metadata["tomoseg_held_out"]``, which the Fine-tune widget writes on the
    annotations it trained on, else from ``state.last_finetune`` when ``reference`` holds the
    annotations it was trained on: every held-out slice is annotated and the slices it did not use
    are not (so a ground truth, annotated everywhere, is scored whole).
    """
    data = reference.data
    raw = (getattr(reference, "metadata", None) or {}).get(HELD_OUT_KEY)
    if isinstance(raw, dict):
        try:
            return _from_metadata(raw, tuple(data.shape))
        except (KeyError, TypeError, ValueError) as err:
            log.warning("ignoring the held-out voxels recorded on %r: %s", reference.name, err)
            return None
    result = getattr(state, "last_finetune", None)
    plan = getattr(result, "plan", None)
    if plan is None:
        return None
    found = HeldOut(
        int(plan.axis),
        tuple(int(i) for i in plan.train_slices),
        getattr(result, "held_out", None),
        getattr(state, "last_finetune_name", None),
    )
    used = set(plan.train_slices) | set(plan.validation_slices)
    return found if _annotated_as_planned(data, found, used) else None


def _from_metadata(raw: dict[str, Any], shape: tuple[int, ...]) -> HeldOut:
    """A :class:`HeldOut` from what the Fine-tune widget recorded on a layer (checked against
    ``shape``: ValueError when it does not fit)."""
    axis = "zyx".index(raw["axis"]) if isinstance(raw["axis"], str) else int(raw["axis"])
    record = {k: v for k, v in raw.items() if k not in ("train_slices", "model")}
    found = HeldOut(
        axis,
        tuple(int(i) for i in raw.get("train_slices", ())),
        None if record.get("kind") == "none" or not record.get("slices") else record,
        raw.get("model"),
    )
    if len(shape) != 3 or any(not 0 <= i < shape[axis] for i in found.slices):
        raise ValueError(f"the recorded slices do not fit a volume of shape {shape}")
    return found


#: Slices outside the plan looked at to tell the trained-on annotations from a full ground truth.
_UNUSED_CHECKED = 3


def _annotated_as_planned(data: Any, found: HeldOut, used: set[int]) -> bool:
    """True if ``data`` has annotations in every held-out slice and none in a few unused slices.

    Reads only those slices; a store is read along other axes than z only when it is in memory."""
    if data.ndim != 3:
        return False
    n = int(data.shape[found.axis])
    if any(not 0 <= i < n for i in (*found.slices, *used)):
        return False
    if found.axis != 0 and not isinstance(data, np.ndarray):
        return True  # a y/x slice of a chunked store reads the whole store: trust the plan

    def plane(i: int) -> Any:
        key: list[Any] = [slice(None)] * 3
        key[found.axis] = i
        return np.asarray(data[tuple(key)])

    if not all(plane(i).any() for i in found.slices):
        return False
    unused = [i for i in range(n) if i not in used]
    picks = (
        [unused[int(k)] for k in np.linspace(0, len(unused) - 1, _UNUSED_CHECKED)] if unused else []
    )
    return not any(plane(i).any() for i in dict.fromkeys(picks))


class ProfilePlot(Container):
    """Phase fractions (%) per z-slice, one line per phase in its colour (a matplotlib canvas), in the
    colours of napari's theme (``viewer``'s, else the settings')."""

    def __init__(self, viewer: Any = None) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.viewer = viewer
        self.figure = Figure(figsize=(4, 2.4), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.native.layout().addWidget(self.canvas)
        self.restyle()
        follow_theme(self.canvas, self.restyle, viewer)

    def restyle(self) -> None:
        """Recolour the plot in napari's current theme."""
        apply_theme(self.figure, theme_colours(self.viewer))
        self.canvas.draw_idle()

    def plot(self, result: Evaluation) -> None:
        """Draw ``result.profile`` against z (µm when the voxel size is known)."""
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
        self.restyle()


class EvaluateWidget(Container):
    """Per-phase Jaccard of a prediction against annotations or a ground truth, and fractions."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.result: Evaluation | None = None
        self.runner = JobRunner("Evaluating")

        def scored(ly: Any) -> bool:
            return ly.name not in _SHOWN_ONLY

        self.prediction = LayerPicker(
            napari_viewer,
            "labels",
            label="Prediction",
            prefer=("prediction",),
            avoid=("annotations", "ground truth"),
            accept=scored,
        )
        self.reference = LayerPicker(
            napari_viewer,
            "labels",
            label="Reference",
            tooltip="The annotations (or a ground truth) the prediction is scored against",
            prefer=("annotations", "ground truth"),
            avoid=("prediction",),
            accept=scored,
        )
        self.image = LayerPicker(
            napari_viewer,
            "image",
            label="Image (baseline)",
            tooltip="The grey volume, for the grey-level baseline column (none: no baseline)",
            optional=True,
            accept=lambda ly: ly.ndim == 3 and not getattr(ly, "rgb", False),
        )
        self.held_out_check = CheckBox(text="Held-out voxels only")
        self.held_out_check.tooltip = (
            "Score only the annotated voxels the fine-tuning kept out of training: scores on "
            "voxels the model was trained on are optimistic"
        )
        self.exclude_check = CheckBox(
            text="Leave out voxels outside the mask (prediction = 0)", value=True
        )
        self.controls = JobControls(self.runner, "Evaluate")
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.table = ResultTable(
            tooltip="Per-phase Jaccard and fractions; hover a header or a number for its full name "
            "or exact value",
            compact=True,
            short_headers=SHORT_HEADERS,
        )
        self.copy_button = PushButton(text="Copy table", enabled=False)
        self.save_button = PushButton(text="Save CSV…", enabled=False)
        self.confusion_table = ResultTable(
            tooltip="Voxels by reference phase (rows) and predicted phase (columns); hover a number "
            "for the exact count",
            row_headers=True,
            compact=True,
        )
        self.plot = ProfilePlot(napari_viewer)

        form = Container(widgets=[self.prediction, self.reference, self.image])
        form.margins = (0, 0, 0, 0)
        buttons = Container(
            widgets=[self.copy_button, self.save_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        super().__init__(
            widgets=[
                form,
                self.held_out_check,
                self.exclude_check,
                self.controls,
                self.summary,
                self.table,
                buttons,
                Label(value="Confusion matrix (rows: reference, columns: prediction)"),
                self.confusion_table,
                Label(value="Phase fractions per slice"),
                self.plot,
            ],
            labels=False,
        )
        tabify_docks(self)

        self.reference.changed.connect(self._update_held_out)
        self.state.finetuned.connect(self._update_held_out)
        self.controls.run_button.changed.connect(self._run_clicked)
        self.copy_button.changed.connect(self.copy_table)
        self.save_button.changed.connect(self.save_csv)
        self._update_held_out()

    # ----------------------------------------------------------------------------------------
    def held_out(self) -> HeldOut | None:
        """What the last fine-tuning held out of the chosen reference, or None."""
        ref = self.reference.layer
        return held_out(self.state, ref) if ref is not None else None

    def _update_held_out(self, *_: Any) -> None:
        try:
            self.native.isVisible()
        except RuntimeError:  # the dock was closed: stop following fine-tuning runs
            self.state.finetuned.disconnect(self._update_held_out)
            return
        found = self.held_out()
        recorded = found is not None and found.record is not None
        self.held_out_check.enabled = recorded
        self.held_out_check.value = recorded
        if found is None:
            text = "Held-out voxels only (none recorded: all annotated voxels)"
        elif found.record is None:
            text = "Held-out voxels only (the fine-tuning held none out: all were trained on)"
        else:
            model = f", kept out of {found.model}" if found.model else ""
            text = f"Held-out voxels only ({found.describe()}{model})"
        self.held_out_check.text = text

    def _run_clicked(self) -> None:
        self.run()

    def run(self) -> bool:
        """Start an evaluation in a worker with the chosen layers; False (with a notification)
        when the choice cannot be evaluated."""
        try:
            pred_layer = self.prediction.layer
            ref_layer = self.reference.layer
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
            image_layer = self.image.layer
            image = None
            if image_layer is not None:
                if tuple(image_layer.data.shape) != tuple(pred.shape):
                    raise ValueError(
                        f"image {image_layer.name!r} {tuple(image_layer.data.shape)} does not "
                        f"match the prediction {tuple(pred.shape)}; choose the segmented volume "
                        "or none"
                    )
                image = image_layer.data
            phases = layer_phases(pred_layer) or layer_phases(ref_layer) or self.state.phases
            found = self.held_out()
            only_held = (
                found is not None
                and found.record is not None
                and bool(self.held_out_check.value)
                and self.held_out_check.enabled
            )
        except ValueError as err:
            notify_error(str(err))
            self.controls.status.value = str(err)
            return False
        # Evaluated with these layers: new layers (errors, annotations) no longer change the choice.
        self.prediction.select(pred_layer)
        self.reference.select(ref_layer)
        options = {
            "phases": phases,
            "image": image,
            "held_out": only_held,
            "region_name": f"held-out {found.describe()}" if only_held and found else None,
            "exclude_outside": bool(self.exclude_check.value),
            "voxel_size": layer_voxel_size(pred_layer),
            "prediction_name": pred_layer.name,
            "reference_name": ref_layer.name,
        }

        def job(token: CancelToken) -> Generator[EvaluationProgress, None, Any]:
            from napari_tomoseg.core.measure.evaluate import iter_evaluate

            shape = tuple(pred.shape)
            # Voxels named by the run's record; the reference's 0s (not annotated) are never scored.
            mask = found.mask(shape) if only_held and found is not None else None
            trained = found.trained_on(shape) if found is not None else None
            errors = np.zeros(shape, dtype=np.uint8)
            result = yield from iter_evaluate(
                pred, ref, mask=mask, trained_on=trained, errors_out=errors, cancel=token, **options
            )
            return result, errors

        self.controls.status.value = "Evaluating…"
        self.runner.start(
            job,
            on_return=self._show,
            on_error=lambda err: setattr(
                self.controls.status, "value", f"Evaluation failed: {err}"
            ),
            on_stopped=lambda: setattr(self.controls.status, "value", "Evaluation stopped."),
            total=1000,
            describe=lambda ev: (int(1000 * ev.fraction), ev.step),
        )
        return True

    # ----------------------------------------------------------------------------------------
    def _show(self, returned: tuple[Evaluation, np.ndarray]) -> None:
        result, errors = returned
        self.result = result
        header, rows = result.table()
        self.table.show_rows(header, rows)
        names = list(result.phases.names)
        self.confusion_table.show_rows(
            ["none", *names],
            [[int(c) for c in result.confusion[i + 1]] for i in range(len(names))],
            index=names,
        )
        self.plot.plot(result)
        self._show_errors(result, errors)
        baseline = (
            f" Grey-level baseline: {format_cell(result.baseline_mean, 'J')} "
            f"({result.baseline_note})."
            if result.baseline_note
            else ""
        )
        warning = trained_on_warning(result.trained_on_voxels)
        self.summary.value = (
            f"Mean Jaccard {format_cell(result.mean_jaccard, 'J')} of {result.prediction_name!r} "
            f"against {result.reference_name!r} on {result.n_evaluated:,} voxels "
            f"({result.region}).{baseline}" + (f"\n⚠ The evaluation {warning}." if warning else "")
        )
        if warning:
            notify_warning(f"The evaluation {warning}")
        self.controls.status.value = "Done."
        self.copy_button.enabled = True
        self.save_button.enabled = True
        self.state.set_evaluation(result)

    def _show_errors(self, result: Evaluation, errors: np.ndarray) -> None:
        from napari.utils.colormaps import DirectLabelColormap

        layers = self.viewer.layers
        like = layers[result.prediction_name] if result.prediction_name in layers else None
        layer = upsert_labels(self.viewer, ERRORS_LAYER, errors, like=like, opacity=0.8)
        layer.colormap = DirectLabelColormap(
            color_dict={None: "transparent", 0: "transparent", 1: ERROR_COLOUR}
        )
        layer.features = {"index": [0, 1], "error": ["", "misclassified"]}

    # ----------------------------------------------------------------------------------------
    def table_text(self, delimiter: str = "\t") -> str:
        """The table as text (tab-separated for the clipboard, CSV for files)."""
        if self.result is None:
            return ""
        header, rows = self.result.table()
        return table_to_csv(header, rows, delimiter=delimiter)

    def copy_table(self) -> None:
        """Put the per-phase table on the clipboard (tab-separated, for spreadsheets)."""
        if self.result is None:
            notify_error("evaluate first: there is no table to copy")
            return
        clipboard = QApplication.clipboard()
        if clipboard is None:  # no QApplication: nothing to copy to
            return
        clipboard.setText(self.table_text("\t"))
        notify_info("Jaccard table copied to the clipboard")

    def save_csv(self) -> None:
        """Ask for a file (and before replacing one) and write the per-phase table as CSV."""
        if self.result is None:
            notify_error("evaluate first: there is no table to save")
            return
        path = choose_output_path(self.native, "Save the table", "evaluation.csv", "CSV (*.csv)")
        if path is None:
            return
        try:
            write_text_atomic(path, self.table_text(","))
        except OSError as err:
            notify_error(f"could not save {path}: {err}")
            return
        notify_info(f"saved {path}")
