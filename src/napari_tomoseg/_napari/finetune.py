"""The Fine-tune dock widget: train the model on the annotated slices, watch loss and Jaccard live.

form -> FinetuneConfig -> worker 1: load the base model, core ``plan_finetune`` (checks; "adapt the model?"
if its phases differ) -> worker 2: core ``iter_finetune`` (TrainProgress events -> live plot; Stop keeps the
best weights) -> the model in the viewer's state ("Segment again" in one click, "Save model…"), the
starting and the kept model's held-out scores, the held-out voxels recorded on the annotations layer; the
next run starts from this model.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.application import use_app
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    SpinBox,
)

from napari_tomoseg._napari.advanced import Advanced, threads_box
from napari_tomoseg._napari.devices import DEVICES
from napari_tomoseg._napari.docking import tabify_docks
from napari_tomoseg._napari.files import remember_model
from napari_tomoseg._napari.jobs import JobControls, JobRunner, JobState
from napari_tomoseg._napari.layers import LayerPicker, check_image_layer, is_image, layer_phases
from napari_tomoseg._napari.models import BUNDLED, MEMORY, ModelChooser, bundled_path
from napari_tomoseg._napari.notify import notify_error, notify_info, notify_warning
from napari_tomoseg._napari.plots import TrainingPlot
from napari_tomoseg._napari.state import HELD_OUT_KEY, held_out_metadata, state_for
from napari_tomoseg.core.learn.finetune import FinetuneConfig

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

__all__ = ["ANNOTATIONS", "VALIDATION", "FinetuneWidget", "parse_slices"]

#: The validation choices of the form: (label, ``FinetuneConfig.validation``).
VALIDATION = (
    ("auto (a band of each slice, or a tenth of the slices)", "auto"),
    ("a band of every annotated slice", "band"),
    ("these slices:", "slices"),
    ("none (keep the last weights)", "none"),
)
#: The layer the annotations picker prefers (the Annotate widget's); it never picks these on its own.
ANNOTATIONS = "annotations"
NEVER_TRAIN_ON = ("ground truth", "prediction")


def parse_slices(text: str) -> tuple[int, ...]:
    """``"3, 10-12"`` -> ``(3, 10, 11, 12)``; a ValueError names the part it cannot read."""
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


def _is_volume(layer: Any) -> bool:
    return is_image(layer) and layer.ndim == 3 and not getattr(layer, "rgb", False)


class FinetuneWidget(Container):
    """Fine-tune a model on the ``annotations`` layer of an image."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.runner = JobRunner("Fine-tuning")
        self.result: Any = None
        self.model_name: str | None = None

        self.image = LayerPicker(napari_viewer, "image", label="Image", accept=_is_volume)
        self.annotations = LayerPicker(
            napari_viewer,
            "labels",
            label="Annotations",
            tooltip="The painted slices to learn from (the Annotate widget's 'annotations' layer)",
            prefer=(ANNOTATIONS,),
            avoid=NEVER_TRAIN_ON,
        )
        self.base = ModelChooser(self.state, label="Base model")
        self.base.combo.tooltip = (
            "The model to start from; after a run, the model it made (fine-tune it further)"
        )
        self.from_bundled = CheckBox(
            text="Start from the bundled model",
            value=False,
            tooltip="Start over from the bundled model rather than the base model chosen above",
        )
        self.scratch = CheckBox(text="from scratch (no base model)", value=False)
        self.starts_from = Label(value="")
        self.validation = ComboBox(
            label="Hold out",
            choices=VALIDATION,
            value="auto",
            tooltip="Annotated voxels kept out of training to score the model and keep its best weights",
        )
        self.held_out = LineEdit(label="Held-out slices", tooltip="e.g. 12, 40-42", visible=False)
        self.held_out.native.setPlaceholderText("e.g. 12, 40")
        self.budget = SpinBox(value=120, min=1, max=1_000_000)
        self.budget_kind = ComboBox(choices=["seconds", "steps"], value="seconds")
        budget_row = Container(
            widgets=[self.budget, self.budget_kind],
            layout="horizontal",
            labels=False,
            label="Budget",
        )
        budget_row.margins = (0, 0, 0, 0)
        self.learning_rate = FloatSpinBox(
            label="Learning rate",
            value=FinetuneConfig.learning_rate,
            min=1e-5,
            max=1.0,
            step=1e-4,
        )
        self.learning_rate.native.setDecimals(5)
        self.validate_every = SpinBox(
            label="Validate every (steps)",
            value=0,
            min=0,
            max=100_000,
            tooltip="Steps between validations; auto: about 12 per run",
        )
        self.validate_every.native.setSpecialValueText("auto")
        self.augment = CheckBox(text="augment (flips/rotations, intensity, noise)", value=True)
        self.device = ComboBox(label="Device", choices=DEVICES, value="auto")
        self.threads = threads_box("trains")
        self.controls = JobControls(self.runner, "Fine-tune")
        self.summary = Label(value="")
        self.summary.native.setWordWrap(True)
        self.segment_again = PushButton(
            text="Segment again with the fine-tuned model", enabled=False
        )
        self.save = PushButton(text="Save model…", enabled=False)
        self.controls.also_disable(self.segment_again, self.save)
        form = Container(
            widgets=[
                self.image,
                self.annotations,
                self.base,
                self.from_bundled,
                self.scratch,
                self.starts_from,
                self.validation,
                self.held_out,
                budget_row,
            ]
        )
        form.margins = (0, 0, 0, 0)
        self.advanced = Advanced(
            [self.learning_rate, self.validate_every, self.augment, self.device, self.threads]
        )
        super().__init__(widgets=[form, self.advanced, self.controls], labels=False)
        tabify_docks(self)
        # magicgui has no plot widget: the matplotlib canvas is embedded as a Qt widget.
        self.plot = TrainingPlot(viewer=napari_viewer)
        self.native.layout().addWidget(self.plot)
        self.extend([self.summary, self.segment_again, self.save])

        self.validation.changed.connect(self._validation_changed)
        self.scratch.changed.connect(self._base_changed)
        self.from_bundled.changed.connect(self._base_changed)
        self.base.model_changed.connect(self._base_changed)
        self._base_changed()
        self.controls.run_button.changed.connect(lambda: self.run())
        self.segment_again.changed.connect(lambda: self.run_segment_again())
        self.save.changed.connect(self._save_clicked)
        self.runner.on_state(self._state_changed)

    # form ------------------------------------------------------------------------------------
    def _validation_changed(self, value: str) -> None:
        self.held_out.visible = value == "slices"

    def _base_changed(self, *_: Any) -> None:
        self.from_bundled.enabled = not self.scratch.value
        self.base.enabled = not (self.scratch.value or self.from_bundled.value)
        self.starts_from.value = f"Starts from: {self.starting_model()}"

    def starting_model(self) -> str:
        """The model the next run starts from, in words."""
        if self.scratch.value:
            return "random weights (from scratch)"
        if self.from_bundled.value:
            return "the bundled model"
        choice = self.base.value
        if choice.startswith(MEMORY):
            name = choice[len(MEMORY) :]
            last = name == self.state.last_finetune_name
            return f"{name}" + (" (the last fine-tuned model)" if last else "")
        return "the bundled model" if choice == BUNDLED else Path(choice).name

    def config_kwargs(self) -> dict[str, Any]:
        """The form as keyword arguments of :class:`~napari_tomoseg.core.learn.finetune.FinetuneConfig`
        (built in the worker, which imports torch)."""
        validation = self.validation.value
        kwargs: dict[str, Any] = {
            "learning_rate": float(self.learning_rate.value),
            "augment": bool(self.augment.value),
            "validation": validation,
            "validate_every": int(self.validate_every.value) or None,
        }
        if self.budget_kind.value == "seconds":
            kwargs.update(budget=float(self.budget.value), steps=None)
        else:
            kwargs.update(budget=None, steps=int(self.budget.value))
        if validation == "slices":
            slices = parse_slices(self.held_out.value)
            if not slices:
                raise ValueError("list the slices to hold out for validation (e.g. '12, 40')")
            kwargs["validation_slices"] = slices
            kwargs["axis"] = 0
        return kwargs

    def confirm_adapt(self, notes: list[str]) -> bool:
        """Ask whether to train a new output layer when the phases differ (tests replace this)."""
        from qtpy.QtWidgets import QMessageBox

        answer = QMessageBox.question(
            self.native,
            "Adapt the model to your phases?",
            "\n\n".join([*notes, "Fine-tune anyway, adapting the model to the annotation phases?"]),
        )
        return answer == QMessageBox.StandardButton.Yes

    # run -------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Check the inputs (worker), ask to adapt the model if needed, then fine-tune (worker).

        Returns False, with a notification saying why, when the inputs are refused.
        """
        if self.runner.running:
            return False
        try:
            image = self.image.layer
            volume = check_image_layer(image)
            ann_layer = self.annotations.layer
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
            load = None if self.scratch.value else self._loader()
        except (ValueError, KeyError) as err:
            notify_error(f"Cannot fine-tune: {err}")
            return False
        phases = layer_phases(ann_layer) or self.state.phases
        # A snapshot: painting goes on while the model trains.
        annotations = np.array(annotations, dtype=np.uint8, copy=True)

        def plan_job(token: Any) -> Generator[None, None, Any]:
            from napari_tomoseg.core.learn.finetune import plan_finetune

            yield from ()
            config = FinetuneConfig(**kwargs)
            base = load() if load is not None else None
            plan = plan_finetune(volume.shape, annotations, base=base, phases=phases, config=config)
            return config, base, plan

        start_name = self.starting_model()

        def planned(res: Any) -> None:
            config, base, plan = res
            if base is not None and (plan.replace_head or plan.phases.names != base.phases.names):
                if not self.confirm_adapt(list(plan.notes)):
                    self.controls.status.value = "Not started: the model was not adapted"
                    return
            for note in plan.notes:
                notify_warning(note)
            # The training starts once the planning worker has fully finished.
            from qtpy.QtCore import QTimer

            QTimer.singleShot(
                0,
                lambda: self._train(volume, annotations, base, plan, config, ann_layer, start_name),
            )

        self.controls.status.value = f"Checking the annotations… (starting from {start_name})"
        self.runner.start(plan_job, on_return=planned)
        return True

    def _loader(self) -> Any:
        """The function a worker calls to load the starting model."""
        if not self.from_bundled.value:
            return self.base.loader()

        def load() -> Any:
            from napari_tomoseg.core.model import load_model

            return load_model(bundled_path())

        return load

    def _train(
        self,
        volume: Any,
        annotations: Any,
        base: Any,
        plan: Any,
        config: Any,
        ann_layer: Any = None,
        start_name: str = "",
    ) -> None:
        if self.runner.running:
            return
        phases = plan.phases
        device = self.device.value
        threads = int(self.threads.value) or None
        self.plot.reset(list(phases.names), [p.colour for p in phases.phases])
        total = config.steps

        def job(token: Any) -> Generator[Any, None, Any]:
            from napari_tomoseg.core.learn.finetune import iter_finetune
            from napari_tomoseg.core.threads import configure_threads

            configure_threads(threads)  # in this worker thread, where torch computes
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
            self.controls.status.value = describe(ev)[1]

        self.controls.status.value = f"Fine-tuning {start_name}…" if start_name else ""
        self.runner.start(
            job,
            on_yield=on_yield,
            on_return=lambda result: self._finished(result, ann_layer, start_name),
            total=total,
            describe=describe,
        )

    def _next_name(self) -> str:
        n = 1
        while f"fine-tuned {n}" in self.state.models:
            n += 1
        return f"fine-tuned {n}"

    def _finished(self, result: Any, ann_layer: Any = None, start_name: str = "") -> None:
        from napari_tomoseg.core.measure.report import held_out_comparison, trained_scores

        if result.start_validation is not None:
            self.plot.add_start(list(result.start_validation.values()))
        self.plot.redraw()
        self.result = result
        self.model_name = self._next_name()
        self.state.add_model(self.model_name, result.model)
        self.state.set_finetune(result, self.model_name)
        if ann_layer is not None:
            # Which voxels the Evaluate widget may score as unseen by this model.
            ann_layer.metadata[HELD_OUT_KEY] = held_out_metadata(result, self.model_name)
        # The next run continues from this model (the bundled one only when asked for).
        self.base.select_memory(self.model_name)
        self.from_bundled.value = False
        self._base_changed()
        names = list(result.plan.phases.names)
        not_scored = (
            "it was trained from scratch"
            if start_name.startswith("random")
            else "its output layer is new"
            if result.plan.replace_head
            else ""
        )
        comparison = held_out_comparison(
            result.start_validation,
            result.validation,
            result.kept,
            trained_scores(result.history, names),
            start_scored=not_scored,
            compared=result.compared,
        )
        first = (
            f"{self.model_name}: {result.steps} steps in {result.seconds:.0f} s ({result.stopped})"
            + (f", from {start_name}" if start_name else "")
        )
        self.summary.value = "\n".join([first, *comparison])
        notify_info(f"{first}. {comparison[0]}")

    def _state_changed(self, state: JobState) -> None:
        ready = self.result is not None and state is not JobState.RUNNING
        self.segment_again.enabled = ready
        self.save.enabled = ready

    # after -----------------------------------------------------------------------------------
    def run_segment_again(self) -> bool:
        """Ask the Segment widget to segment again with the fine-tuned model (docking it if needed).

        Returns False when there is no fine-tuned model yet.
        """
        if self.result is None or self.model_name is None:
            notify_error("Fine-tune a model first")
            return False
        if len(self.state.segment_requested) == 0:  # no Segment widget listens: dock one
            self.viewer.window.add_plugin_dock_widget("napari-tomoseg", "Segment")
        self.state.segment_requested.emit(self.model_name)
        return True

    def _save_clicked(self, *_: Any) -> None:
        show_dialog = use_app().get_obj("show_file_dialog")
        path = show_dialog(
            "w",
            caption="Save the fine-tuned model",
            start_path="fine-tuned.safetensors",
            filter="Models (*.safetensors)",
            parent=self.native,
        )
        if path:
            if not path.endswith(".safetensors"):
                path += ".safetensors"
            # The file dialog has asked about replacing an existing file already.
            self.save_model(path, overwrite=True)

    def save_model(self, path: str | Path, *, overwrite: bool = False) -> Path | None:
        """Save the fine-tuned model (weights + phases + provenance) to a ``.safetensors`` file.

        Returns the file written, or None (with a notification) when it could not be saved.
        """
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
        return Path(out)
