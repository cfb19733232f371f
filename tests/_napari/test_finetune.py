"""The Fine-tune widget: checks, adapting phases, live plot, Stop keeps weights, segment again, save."""

from __future__ import annotations

import itertools
import time
from functools import cache

import numpy as np
import pytest

from napari_tomoseg._napari.finetune import FinetuneWidget, parse_slices
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.layers import apply_phases
from napari_tomoseg._napari.segment import PREDICTION, SegmentWidget
from napari_tomoseg._napari.state import state_for
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable


@pytest.fixture
def annotated_viewer(sample_viewer, small_phantom):
    _, truth = small_phantom
    ann = np.zeros_like(truth)
    for z in (4, 12, 19):
        ann[z] = truth[z]
    layer = sample_viewer.add_labels(ann, name="annotations", scale=(1.3,) * 3)
    apply_phases(layer, COMPOSITE_PHASES)
    return sample_viewer


@pytest.fixture
def widget(annotated_viewer, qtbot):
    w = FinetuneWidget(annotated_viewer)
    qtbot.addWidget(w.native)
    w.budget_kind.value = "steps"
    w.budget.value = 6
    return w


def _wait_training(qtbot, widget, wait_job):
    # first job: planning; the training job starts right after it
    qtbot.waitUntil(
        lambda: (
            widget.result is not None
            or widget.runner.state is JobState.FAILED
            or (
                widget.runner.state is not JobState.RUNNING
                and "Not started" in widget.controls.status.value
            )
        ),
        timeout=120_000,
    )
    return wait_job(widget.runner)


def test_parse_slices():
    assert parse_slices("3, 10-12; 7") == (3, 7, 10, 11, 12)
    with pytest.raises(ValueError, match="'x'"):
        parse_slices("1, x")


def test_finetune_plot_segment_again_and_save(annotated_viewer, widget, qtbot, wait_job, tmp_path):
    seg = SegmentWidget(annotated_viewer)
    qtbot.addWidget(seg.native)
    state = state_for(annotated_viewer)
    finetuned = []
    state.finetuned.connect(finetuned.append)
    assert widget.annotations.layer is annotated_viewer.layers["annotations"]
    widget.validation.value = "slices"
    assert not widget.held_out.native.isHidden()  # the slices field shows with that choice
    widget.held_out.value = "12"
    widget.validate_every.value = 3
    assert widget.run()
    assert not widget.controls.run_button.enabled
    assert _wait_training(qtbot, widget, wait_job) is JobState.DONE
    res = widget.result
    assert res.steps == 6 and res.plan.validation_slices == (12,)
    assert set(res.validation) == {"matrix", "fibre", "pore"}
    assert widget.plot.steps == list(range(1, 7))  # the live plot got every event
    # every validation, and the starting model's score at step 0
    assert widget.plot.val_steps == [0, 3, 6] and len(widget.plot.val[0]) == 3
    assert widget.plot.val[0] == tuple(res.start_validation.values())
    assert "on the held-out voxels" in widget.summary.value or "held-out Jaccard" in (
        widget.summary.value
    )
    # the model is in the viewer's state (every model chooser lists it), the result too (Evaluate
    # reads the held-out voxels from it)
    assert state.models["fine-tuned 1"] is res.model
    assert state.last_finetune is res and finetuned == [res]
    assert ("In memory: fine-tuned 1", "memory:fine-tuned 1") in [
        (seg.model.combo.native.itemText(i), c) for i, c in enumerate(seg.model.combo.choices)
    ]
    # one click: segment again with the fine-tuned model (the Segment widget listens to the state)
    assert widget.segment_again.enabled
    widget.segment_again.native.click()
    assert seg.model.value == "memory:fine-tuned 1"
    # the 2D base was extended to 2.5D: the Segment widget offers the modes that model runs
    assert seg.mode.choices == ("2d-3axes", "2.5d") and seg.mode.value == "2.5d"
    assert wait_job(seg.runner) is JobState.DONE
    pred = annotated_viewer.layers[PREDICTION]
    assert pred.metadata["tomoseg_model"] == "in memory"
    from napari_tomoseg.core.segment import InferenceConfig, segment_volume

    expected = segment_volume(
        annotated_viewer.layers["composite"].data, res.model, InferenceConfig(device="cpu")
    ).labels
    np.testing.assert_array_equal(pred.data, expected)
    # save, and refuse to overwrite silently
    out = widget.save_model(tmp_path / "mine.safetensors")
    from napari_tomoseg.core.model import load_model

    loaded = load_model(out)
    assert loaded.phases == COMPOSITE_PHASES and loaded.provenance["steps"] == 6
    assert widget.save_model(tmp_path / "mine.safetensors") is None


def test_stop_keeps_the_best_weights(widget, qtbot, wait_job):
    widget.budget.value = 100_000
    assert widget.run()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 2, timeout=120_000)
    widget.controls.stop_button.native.click()
    assert wait_job(widget.runner) is JobState.STOPPED
    assert widget.result is not None and widget.result.stopped != "steps"
    assert widget.result.steps < 100_000
    assert widget.segment_again.enabled and widget.save.enabled


def test_no_annotations_and_one_phase(
    annotated_viewer, widget, qtbot, wait_job, errors, warnings, monkeypatch
):
    layer = annotated_viewer.layers["annotations"]
    layer.data = np.zeros_like(layer.data)
    assert widget.run()
    assert wait_job(widget.runner) is JobState.FAILED
    assert "no annotated voxel" in errors[-1]
    data = np.zeros_like(layer.data)
    data[3, :5, :5] = 1
    layer.data = data
    # the warning is what we check (on the class: a magicgui container's attributes are widgets)
    trained = []
    monkeypatch.setattr(FinetuneWidget, "_train", lambda *a: trained.append(a))
    assert widget.run()
    wait_job(widget.runner)
    # the training is started (here: not) once the planning job is over; wait for it, so that it
    # cannot start for real after the test
    qtbot.waitUntil(lambda: bool(trained), timeout=10_000)
    assert any("only phase 'matrix'" in w for w in warnings)


def test_different_phases_ask_before_adapting(
    annotated_viewer, widget, wait_job, monkeypatch, qtbot
):
    layer = annotated_viewer.layers["annotations"]
    apply_phases(layer, PhaseTable.from_names(["matrix", "fibre", "pore", "crack"]))
    asked = []
    monkeypatch.setattr(
        FinetuneWidget, "confirm_adapt", lambda self, notes: asked.append(notes) or False
    )
    assert widget.run()
    wait_job(widget.runner)
    qtbot.wait(50)
    assert asked and "new output layer" in " ".join(asked[0])
    assert widget.result is None and "Not started" in widget.controls.status.value


def test_bad_input(make_napari_viewer, qtbot, errors, small_phantom):
    viewer = make_napari_viewer()
    w = FinetuneWidget(viewer)
    qtbot.addWidget(w.native)
    assert not w.run()
    assert "no image layer" in errors[-1]
    viewer.add_image(small_phantom[0], name="ct")
    assert not w.run()
    assert "no annotations layer" in errors[-1]
    viewer.add_labels(np.zeros((2, 2, 2), np.uint8), name="annotations")
    assert w.annotations.layer is viewer.layers["annotations"]
    assert not w.run()
    assert "shape (2, 2, 2)" in errors[-1]


def test_closing_napari_stops_the_job(annotated_viewer, widget, qtbot, wait_job):
    widget.budget.value = 100_000
    assert widget.run()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 1, timeout=120_000)
    token = widget.runner.token
    from qtpy.QtGui import QCloseEvent
    from qtpy.QtWidgets import QApplication

    # What the window's close button sends; the fixture closes the window for real afterwards.
    QApplication.sendEvent(annotated_viewer.window._qt_window, QCloseEvent())
    assert token.cancelled
    assert wait_job(widget.runner) is JobState.STOPPED
    assert widget.runner.worker_finished  # the thread has ended, nothing runs on


def test_ids_outside_the_phase_table(annotated_viewer, widget, wait_job, errors):
    layer = annotated_viewer.layers["annotations"]
    data = layer.data.copy()
    data[4, :3, :3] = 5  # the table has 3 phases
    layer.data = data
    assert widget.run()
    assert wait_job(widget.runner) is JobState.FAILED
    assert "[5]" in errors[-1] and "phase table lacks" in errors[-1]
    np.testing.assert_array_equal(layer.data, data)  # the user's annotations are untouched


def test_docked_before_the_annotations_exist_trains_on_them(
    sample_viewer, small_phantom, qtbot, wait_job
):
    """As a new user would: open the sample, dock Fine-tune, then create the annotations layer."""
    viewer = sample_viewer
    assert {ly.name for ly in viewer.layers} == {"composite", "ground truth"}
    _, widget = viewer.window.add_plugin_dock_widget("napari-tomoseg", "Fine-tune")
    assert isinstance(widget, FinetuneWidget)
    # the sample's ground truth is never picked on its own: no layer to train on yet
    assert widget.annotations.layer is None
    assert "ground truth" in [ly.name for ly in widget.annotations.layers()]  # still choosable

    _, truth = small_phantom
    ann = np.zeros_like(truth)
    for z in (6, 17):
        ann[z] = truth[z]
    layer = viewer.add_labels(ann, name="annotations", scale=(1.3,) * 3)
    apply_phases(layer, COMPOSITE_PHASES)
    assert widget.annotations.layer is layer  # the picker follows the viewer

    widget.budget_kind.value = "steps"
    widget.budget.value = 2
    widget.validation.value = "none"
    assert widget.run()
    assert _wait_training(qtbot, widget, wait_job) is JobState.DONE
    plan = widget.result.plan
    # it trained on the two annotated slices of `annotations`, not on the 24 of `ground truth`
    assert plan.train_slices == (6, 17) and plan.axis == 0
    expected = np.bincount(ann.ravel(), minlength=4)[1:]
    assert tuple(plan.counts) == tuple(int(c) for c in expected)


def test_a_prediction_is_never_picked_as_annotations(make_napari_viewer, qtbot, small_phantom):
    viewer = make_napari_viewer()
    volume, truth = small_phantom
    viewer.add_image(volume, name="scan")
    viewer.add_labels(truth, name=PREDICTION)
    w = FinetuneWidget(viewer)
    qtbot.addWidget(w.native)
    assert w.annotations.layer is None
    viewer.add_labels(np.zeros_like(truth), name="my labels")  # any other labels layer will do
    assert w.annotations.layer is viewer.layers["my labels"]
    viewer.add_labels(np.zeros_like(truth), name="annotations")  # the preferred one wins
    assert w.annotations.layer is viewer.layers["annotations"]


# --------------------------------------------------------------------------------------------
# Before / after on the held-out voxels, the model the next run starts from, the budget


@cache
def _phantom16():
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom

    return make_phantom(PhantomConfig(shape=(16, 64, 64)), seed=3)


@pytest.fixture
def three_slices(make_napari_viewer, qtbot):
    """A viewer with a 16x64x64 phantom and 3 annotated slices; its Fine-tune widget."""
    ph = _phantom16()
    viewer = make_napari_viewer()
    viewer.add_image(ph.volume.copy(), name="composite")
    ann = np.zeros_like(ph.labels)
    for z in (3, 8, 12):
        ann[z] = ph.labels[z]
    apply_phases(viewer.add_labels(ann, name="annotations"), COMPOSITE_PHASES)
    w = FinetuneWidget(viewer)
    qtbot.addWidget(w.native)
    w.budget_kind.value = "steps"
    w.budget.value = 4
    w.validate_every.value = 2
    return viewer, w


def test_before_after_and_the_next_run_starts_from_the_fine_tuned_model(
    three_slices, qtbot, wait_job
):
    from napari_tomoseg.core.measure.report import held_out_comparison, trained_scores

    viewer, w = three_slices
    layer = viewer.layers["annotations"]
    assert w.starts_from.value == "Starts from: the bundled model"
    assert w.run()
    assert _wait_training(qtbot, w, wait_job) is JobState.DONE
    first = w.result
    assert first.plan.validation == "band" and first.start_validation is not None
    # before / after on the held-out voxels, and which model was kept
    names = list(COMPOSITE_PHASES.names)
    expected = held_out_comparison(
        first.start_validation,
        first.validation,
        first.kept,
        trained_scores(first.history, names),
        compared=first.compared,
    )
    lines = w.summary.value.splitlines()
    assert lines[0].startswith("fine-tuned 1: 4 steps") and "from the bundled model" in lines[0]
    assert lines[1:] == expected
    # the means shown are over the phases that ranked the two models
    assert first.compared is not None and set(first.compared) <= set(names)
    start_mean = np.nanmean([first.start_validation[n] for n in first.compared])
    if first.kept == "fine-tuned":
        final_mean = np.nanmean([first.validation[n] for n in first.compared])
        assert lines[1].startswith("Kept the fine-tuned model: held-out Jaccard")
        assert f"{start_mean:.3f} → {final_mean:.3f}" in lines[1]
    else:
        assert lines[1].startswith(
            "Kept the starting model: training did not beat it on the held-out voxels"
        )
        assert f"({start_mean:.3f} vs" in lines[1]
    for name in names:
        assert f"{name} {first.start_validation[name]:.3f}" in lines[2]
    # the curve: the start at step 0, then every validation including the closing one
    assert w.plot.val_steps == [0, 2, 4]
    assert w.plot.val[0] == tuple(first.start_validation.values())
    # the held-out voxels are recorded on the annotations, with the model they belong to
    assert layer.metadata["tomoseg_held_out"] == {
        **first.held_out,
        "train_slices": [3, 8, 12],
        "model": "fine-tuned 1",
    }

    # the next run starts from the fine-tuned model
    assert w.base.value == "memory:fine-tuned 1"
    assert w.starts_from.value == "Starts from: fine-tuned 1 (the last fine-tuned model)"
    w.budget.value = 2
    assert w.run()
    assert _wait_training(qtbot, w, wait_job) is JobState.DONE
    second = w.result
    assert second is not first
    assert second.model.provenance["base_provenance"] is first.model.provenance
    # the same held-out band: the start of this run scores as the model the first one kept
    assert second.start_validation == pytest.approx(first.validation, nan_ok=True)
    assert "from fine-tuned 1" in w.summary.value.splitlines()[0]
    assert layer.metadata["tomoseg_held_out"]["model"] == "fine-tuned 2"
    assert w.base.value == "memory:fine-tuned 2"

    # ... unless asked to start over from the bundled model
    w.from_bundled.value = True
    assert not w.base.enabled
    assert w.starts_from.value == "Starts from: the bundled model"
    assert w.run()
    assert _wait_training(qtbot, w, wait_job) is JobState.DONE
    third = w.result
    assert third.model.provenance["fine_tuned_from"].startswith("bundled:")
    assert third.model.provenance.get("base_provenance") is not first.model.provenance
    assert third.start_validation == pytest.approx(first.start_validation, nan_ok=True)
    assert not w.from_bundled.value and w.base.value == "memory:fine-tuned 3"


def test_a_budget_in_seconds_is_kept(three_slices, qtbot, wait_job):
    _, w = three_slices
    w.budget_kind.value = "seconds"
    w.budget.value = 6
    w.validate_every.value = 0  # auto
    times: list[tuple[JobState, float]] = []
    w.runner.on_state(lambda state: times.append((state, time.perf_counter())))
    assert w.run()
    assert _wait_training(qtbot, w, wait_job) is JobState.DONE
    # the training job only (the planning job before it loads the base model): start -> done
    running = [t for state, t in times if state is JobState.RUNNING]
    done = [t for state, t in times if state is JobState.DONE]
    assert len(running) == 2
    seconds = done[-1] - running[-1]
    steps = w.result.history
    elapsed = [0.0, *(ev.elapsed for ev in steps)]
    one_step = max(b - a for a, b in itertools.pairwise(elapsed))
    assert w.result.stopped == "budget"
    assert seconds <= 6 + 2 + one_step, (seconds, one_step, len(steps))
