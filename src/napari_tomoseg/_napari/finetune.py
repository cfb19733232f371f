"""The Fine-tune dock widget: train the model on the annotated slices, watch loss and Jaccard live.

form -> FinetuneConfig -> worker 1: load the base model, core ``plan_finetune`` (checks; "adapt the
model?" if its phases differ) -> worker 2: core ``iter_finetune`` (TrainProgress events -> live plot;
Stop keeps the best weights) -> the model in the session ("Segment again" in one click, "Save model").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_tomoseg._napari._common import (
    JobControls,
    JobRunner,
    JobState,
    LayerCombo,
    check_image_layer,
    layer_phases,
    notify_error,
    notify_info,
    notify_warning,
    remember_model,
    session,
)
from napari_tomoseg._napari._models import ModelChooser

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

VALIDATION = {
    "auto (a band of each slice, or every 5th slice)": "auto",
    "a band of every annotated slice": "band",
    "these slices:": "slices",
    "none (keep the last weights)": "none",
}
AXES = ("z", "y", "x")


def parse_slices(text: str) -> tuple[int, ...]:
    """``"3, 10-12"`` -> ``(3, 10, 11, 12)``; ValueError with the offending part."""
    out: list[int] = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out.extend(range(min(a, b), max(a, b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"cannot read slice {part!r}; write e.g. '12, 40-42'") from None
    return tuple(sorted(set(out)))


class _LivePlot(QWidget):
    """Training loss and validation Jaccard per phase against the step (matplotlib Qt canvas).

    Redraws are coalesced (``draw_idle``) and throttled, so a fast training loop never floods the
    Qt event loop with drawing.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.2), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax_loss = self.figure.add_subplot(2, 1, 1)
        self.ax_val = self.figure.add_subplot(2, 1, 2, sharex=self.ax_loss)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._last_draw = 0.0
        self.reset([])

    def reset(self, names: list[str], colours: list[str] | None = None) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val: list[tuple[float, ...]] = []
        self.names = names
        self.colours = colours or [None] * len(names)  # type: ignore[list-item]
        self.ax_loss.clear()
        self.ax_val.clear()
        (self.loss_line,) = self.ax_loss.plot([], [], color="#444444", lw=1)
        self.ax_loss.set_ylabel("loss")
        self.val_lines = [
            self.ax_val.plot([], [], marker="o", ms=3, label=n, color=c)[0]
            for n, c in zip(names, self.colours, strict=True)
        ]
        self.ax_val.set_ylabel("val. Jaccard")
        self.ax_val.set_xlabel("step")
        self.ax_val.set_ylim(0, 1.02)
        if names:
            self.ax_val.legend(loc="lower right", fontsize="small")
        self.canvas.draw_idle()

    def add(self, event: Any) -> None:
        self.steps.append(int(event.step))
        self.losses.append(float(event.loss))
        if event.validation is not None:
            self.val_steps.append(int(event.step))
            self.val.append(tuple(float(v) for v in event.validation))
        # A matplotlib draw costs tens of ms on the Qt thread: at most one a second (and at each
        # validation), whatever the speed of training.
        if time.perf_counter() - self._last_draw > 1.0 or event.validation is not None:
            self.redraw()

    def redraw(self) -> None:
        self._last_draw = time.perf_counter()
        self.loss_line.set_data(self.steps, self.losses)
        for i, line in enumerate(self.val_lines):
            line.set_data(self.val_steps, [v[i] if i < len(v) else np.nan for v in self.val])
        self.ax_loss.relim()
        self.ax_loss.autoscale_view()
        self.canvas.draw_idle()


class FinetuneWidget(QWidget):
    """Fine-tune a model on the ``annotations`` layer of an image."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session(napari_viewer)
        self.session.widgets["finetune"] = self
        self.runner = JobRunner("Fine-tuning")
        self.result: Any = None
        self.model_name: str | None = None
        self._count = 0

        self.image = LayerCombo(napari_viewer, "image", accept=lambda ly: ly.ndim == 3)
        self.annotations = LayerCombo(napari_viewer, "labels")
        if "annotations" in napari_viewer.layers:
            self.annotations.set_layer("annotations")
        self.base = ModelChooser(self.session)
        self.scratch = QCheckBox("from scratch (no base model)")
        self.validation = QComboBox()
        self.validation.addItems(list(VALIDATION))
        self.held_out = QLineEdit()
        self.held_out.setPlaceholderText("e.g. 12, 40")
        self.budget_kind = QComboBox()
        self.budget_kind.addItems(["seconds", "steps"])
        self.budget = QSpinBox()
        self.budget.setRange(1, 1_000_000)
        self.budget.setValue(120)
        self.learning_rate = QDoubleSpinBox()
        self.learning_rate.setDecimals(5)
        self.learning_rate.setRange(1e-5, 1.0)
        self.learning_rate.setSingleStep(1e-4)
        self.learning_rate.setValue(1e-3)
        self.validate_every = QSpinBox()
        self.validate_every.setRange(0, 100_000)
        self.validate_every.setSpecialValueText("auto")
        self.validate_every.setSuffix(" steps")
        self.augment = QCheckBox("augment (flips/rotations, intensity, noise)")
        self.augment.setChecked(True)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.controls = JobControls(self.runner, "Fine-tune")
        self.plot = _LivePlot()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.segment_again = QPushButton("Segment again with the fine-tuned model")
        self.save = QPushButton("Save model…")
        self.segment_again.setEnabled(False)
        self.save.setEnabled(False)
        self.controls.also_disable(self.segment_again, self.save)

        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Annotations", self.annotations)
        form.addRow("Base model", self.base)
        form.addRow("", self.scratch)
        val_row = QHBoxLayout()
        val_row.addWidget(self.validation, 1)
        val_row.addWidget(self.held_out)
        form.addRow("Hold out", val_row)
        budget_row = QHBoxLayout()
        budget_row.addWidget(self.budget)
        budget_row.addWidget(self.budget_kind)
        form.addRow("Budget", budget_row)
        form.addRow("Learning rate", self.learning_rate)
        form.addRow("Validate every", self.validate_every)
        form.addRow("", self.augment)
        form.addRow("Device", self.device)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.controls)
        layout.addWidget(self.controls.status)
        layout.addWidget(self.plot)
        layout.addWidget(self.summary)
        layout.addWidget(self.segment_again)
        layout.addWidget(self.save)
        layout.addStretch(1)

        self.controls.run_button.clicked.connect(lambda: self.run())
        self.segment_again.clicked.connect(lambda: self.run_segment_again())
        self.save.clicked.connect(self._save_clicked)
        self.runner.on_state(self._state_changed)

    # form ------------------------------------------------------------------------------------
    def config_kwargs(self) -> dict[str, Any]:
        """The form as keyword arguments of :class:`~napari_tomoseg.core.learn.finetune.FinetuneConfig`."""
        validation = VALIDATION[self.validation.currentText()]
        kwargs: dict[str, Any] = {
            "learning_rate": float(self.learning_rate.value()),
            "augment": self.augment.isChecked(),
            "validation": validation,
            "validate_every": self.validate_every.value() or None,
        }
        if self.budget_kind.currentText() == "seconds":
            kwargs.update(budget=float(self.budget.value()), steps=None)
        else:
            kwargs.update(budget=None, steps=int(self.budget.value()))
        if validation == "slices":
            slices = parse_slices(self.held_out.text())
            if not slices:
                raise ValueError("list the slices to hold out for validation (e.g. '12, 40')")
            kwargs["validation_slices"] = slices
            kwargs["axis"] = 0
        return kwargs

    def confirm_adapt(self, notes: list[str]) -> bool:
        """Ask whether to train a new output layer when the phases differ (tests replace this)."""
        answer = QMessageBox.question(
            self,
            "Adapt the model to your phases?",
            "\n\n".join([*notes, "Fine-tune anyway, adapting the model to the annotation phases?"]),
        )
        return answer == QMessageBox.StandardButton.Yes

    # run -------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Check the inputs (worker), ask to adapt the model if needed, then fine-tune (worker)."""
        if self.runner.running:
            return False
        try:
            image = self.image.layer()
            volume = check_image_layer(image)
            ann_layer = self.annotations.layer()
            if ann_layer is None:
                raise ValueError(
                    "no annotations layer: create one in the Annotate widget and paint or copy a few "
                    "slices"
                )
            annotations = ann_layer.data
            if tuple(annotations.shape) != tuple(volume.shape):
                raise ValueError(
                    f"annotations {ann_layer.name!r} have shape {tuple(annotations.shape)} but image "
                    f"{image.name!r} has {tuple(volume.shape)}"
                )
            kwargs = self.config_kwargs()
            load = None if self.scratch.isChecked() else self.base.loader()
        except (ValueError, KeyError) as err:
            notify_error(f"Cannot fine-tune: {err}")
            return False
        phases = layer_phases(ann_layer) or self.session.phases
        annotations = np.array(
            annotations, dtype=np.uint8, copy=True
        )  # a snapshot: painting goes on

        def plan_job(token: Any) -> Generator[None, None, Any]:
            from napari_tomoseg.core.learn.finetune import FinetuneConfig, plan_finetune

            yield from ()
            config = FinetuneConfig(**kwargs)
            base = load() if load is not None else None
            plan = plan_finetune(volume.shape, annotations, base=base, phases=phases, config=config)
            return config, base, plan

        def planned(res: Any) -> None:
            config, base, plan = res
            if base is not None and (plan.replace_head or plan.phases.names != base.phases.names):
                if not self.confirm_adapt(list(plan.notes)):
                    self.controls.status.setText("Not started: the model was not adapted")
                    return
            for note in plan.notes:
                notify_warning(note)
            # Qt: start the training once the planning worker has fully finished.
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self._train(volume, annotations, base, plan, config))

        self.controls.status.setText("Checking the annotations…")
        self.runner.start(plan_job, on_return=planned)
        return True

    def _train(self, volume: Any, annotations: Any, base: Any, plan: Any, config: Any) -> None:
        if self.runner.running:
            return
        phases = plan.phases
        device = self.device.currentText()
        self.plot.reset(list(phases.names), [p.colour for p in phases.phases])
        total = config.steps

        def job(token: Any) -> Generator[Any, None, Any]:
            from napari_tomoseg.core.learn.finetune import iter_finetune

            result = yield from iter_finetune(
                volume,
                annotations,
                base=base,
                phases=phases,
                config=config,
                cancel=token,
                device=device,
            )
            return result

        def describe(ev: Any) -> tuple[int | None, str]:
            value = ev.step if total else None
            text = f"step {ev.step}, loss {ev.loss:.3f}"
            if ev.best_mean is not None:
                text += f", best val. Jaccard {ev.best_mean:.3f}"
            return value, text

        def on_yield(ev: Any) -> None:
            self.plot.add(ev)
            self.controls.status.setText(describe(ev)[1])

        self.runner.start(
            job,
            on_yield=on_yield,
            on_return=self._finished,
            total=total,
            describe=describe,
        )

    def _finished(self, result: Any) -> None:
        self.plot.redraw()
        self.result = result
        self._count += 1
        self.model_name = f"fine-tuned {self._count}"
        self.session.add_model(self.model_name, result.model)
        lines = [
            f"{self.model_name}: {result.steps} steps in {result.seconds:.0f} s ({result.stopped})"
        ]
        if result.validation:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in result.validation.items())
            mean = np.nanmean(list(result.validation.values()))
            lines.append(f"held-out Jaccard: {scores} (mean {mean:.3f})")
        else:
            lines.append("no held-out validation: the last weights are kept")
        self.summary.setText("\n".join(lines))
        notify_info(lines[0])

    def _state_changed(self, state: JobState) -> None:
        ready = self.result is not None and state is not JobState.RUNNING
        self.segment_again.setEnabled(ready)
        self.save.setEnabled(ready)

    # after -----------------------------------------------------------------------------------
    def run_segment_again(self) -> bool:
        """Segment the image again with the fine-tuned model (opens the Segment widget if needed)."""
        if self.result is None or self.model_name is None:
            notify_error("Fine-tune a model first")
            return False
        widget = self.session.widgets.get("segment")
        if widget is None:
            _, widget = self.viewer.window.add_plugin_dock_widget("napari-tomoseg", "Segment")
        image = self.image.layer()
        if image is not None:
            widget.image.set_layer(image.name)
        return bool(widget.run(model_name=self.model_name))

    def _save_clicked(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the fine-tuned model", "fine-tuned.safetensors", "Models (*.safetensors)"
        )
        if path:
            if not path.endswith(".safetensors"):
                path += ".safetensors"
            # The file dialog has asked about replacing an existing file already.
            self.save_model(path, overwrite=True)

    def save_model(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Save the fine-tuned model (weights + phases + provenance) to a ``.safetensors`` file."""
        if self.result is None:
            notify_error("Fine-tune a model first")
            return None
        from napari_tomoseg.core.model import save_model

        try:
            out = save_model(path, self.result.model, overwrite=overwrite)
        except (ValueError, OSError) as err:
            notify_error(f"Could not save the model: {err}")
            return None
        remember_model(out)
        notify_info(f"Saved the model to {out}")
        return out

    def closeEvent(self, event: Any) -> None:
        self.runner.quit()
        super().closeEvent(event)
