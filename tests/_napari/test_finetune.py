"""The Fine-tune widget: checks, adapting phases, live plot, Stop keeps weights, segment again, save."""

from __future__ import annotations

import numpy as np
import pytest

import napari_tomoseg._napari._common as common
from napari_tomoseg._napari._common import JobState, apply_phases
from napari_tomoseg._napari.finetune import FinetuneWidget, parse_slices
from napari_tomoseg._napari.segment import PREDICTION, SegmentWidget
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable


@pytest.fixture
def errors(monkeypatch):
    shown = []
    monkeypatch.setattr(common, "show_error", shown.append)
    return shown


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
    qtbot.addWidget(w)
    w.budget_kind.setCurrentText("steps")
    w.budget.setValue(6)
    return w


def _wait_training(qtbot, widget, wait_job):
    # first job: planning; the training job starts right after it
    qtbot.waitUntil(
        lambda: (
            widget.result is not None
            or widget.runner.state is JobState.FAILED
            or (
                widget.runner.state is not JobState.RUNNING
                and "Not started" in widget.controls.status.text()
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
    qtbot.addWidget(seg)
    widget.validation.setCurrentText("these slices:")
    widget.held_out.setText("12")
    widget.validate_every.setValue(3)
    assert widget.run()
    assert not widget.controls.run_button.isEnabled()
    assert _wait_training(qtbot, widget, wait_job) is JobState.DONE
    res = widget.result
    assert res.steps == 6 and res.plan.validation_slices == (12,)
    assert set(res.validation) == {"matrix", "fibre", "pore"}
    assert widget.plot.steps == list(range(1, 7))  # the live plot got every event
    assert widget.plot.val_steps == [3, 6] and len(widget.plot.val[0]) == 3
    assert "held-out Jaccard" in widget.summary.text()
    assert "fine-tuned 1" in widget.session.models
    # one click: segment again with the fine-tuned model
    assert widget.segment_again.isEnabled()
    assert widget.run_segment_again()
    assert seg.model.currentData() == "memory:fine-tuned 1"
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
    widget.budget.setValue(100_000)
    assert widget.run()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 2, timeout=120_000)
    widget.controls.stop_button.click()
    assert wait_job(widget.runner) is JobState.STOPPED
    assert widget.result is not None and widget.result.stopped != "steps"
    assert widget.result.steps < 100_000
    assert widget.segment_again.isEnabled()


def test_no_annotations_and_one_phase(annotated_viewer, widget, wait_job, errors, monkeypatch):
    warnings = []
    monkeypatch.setattr(common, "show_warning", warnings.append)
    layer = annotated_viewer.layers["annotations"]
    layer.data = np.zeros_like(layer.data)
    assert widget.run()
    assert wait_job(widget.runner) is JobState.FAILED
    assert "no annotated voxel" in errors[-1]
    data = np.zeros_like(layer.data)
    data[3, :5, :5] = 1
    layer.data = data
    monkeypatch.setattr(widget, "_train", lambda *a: None)  # the warning is what we check
    assert widget.run()
    wait_job(widget.runner)
    assert any("only phase 'matrix'" in w for w in warnings)


def test_different_phases_ask_before_adapting(
    annotated_viewer, widget, wait_job, monkeypatch, qtbot
):
    layer = annotated_viewer.layers["annotations"]
    apply_phases(layer, PhaseTable.from_names(["matrix", "fibre", "pore", "crack"]))
    asked = []
    monkeypatch.setattr(widget, "confirm_adapt", lambda notes: asked.append(notes) or False)
    assert widget.run()
    wait_job(widget.runner)
    qtbot.wait(50)
    assert asked and "new output layer" in " ".join(asked[0])
    assert widget.result is None and "Not started" in widget.controls.status.text()


def test_bad_input(make_napari_viewer, qtbot, errors, small_phantom):
    viewer = make_napari_viewer()
    w = FinetuneWidget(viewer)
    qtbot.addWidget(w)
    assert not w.run()
    assert "no image layer" in errors[-1]
    viewer.add_image(small_phantom[0], name="ct")
    assert not w.run()
    assert "no annotations layer" in errors[-1]
    viewer.add_labels(np.zeros((2, 2, 2), np.uint8), name="annotations")
    w.annotations.set_layer("annotations")
    assert not w.run()
    assert "shape (2, 2, 2)" in errors[-1]


def test_closing_napari_stops_the_job(annotated_viewer, widget, qtbot, wait_job):
    widget.budget.setValue(100_000)
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
