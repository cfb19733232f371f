"""The evaluate widget in a real viewer: Jaccard against core.measure, errors layer, table export,
the held-out voxels of the last fine-tuning, the evaluation shared with the other widgets."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication, QFileDialog, QMessageBox

from napari_tomoseg._napari import notify
from napari_tomoseg._napari.evaluate import EvaluateWidget
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.layers import apply_phases
from napari_tomoseg._napari.state import state_for
from napari_tomoseg._napari.tables import compact_number
from napari_tomoseg.core.learn.finetune import (
    FinetunePlan,
    band_mask,
    held_out_mask,
    held_out_voxels,
)
from napari_tomoseg.core.measure.baseline import GreyLevelClassifier
from napari_tomoseg.core.measure.metrics import (
    confusion_matrix,
    jaccard_from_confusion,
    phase_fractions,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES

from .conftest import VOXEL_UM


@pytest.fixture
def errors_seen(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(notify, "show_error", seen.append)
    return seen


def _corrupt(labels, seed=0):
    """A 'prediction': the truth with ~10 % of voxels moved to another phase."""
    rng = np.random.default_rng(seed)
    pred = labels.copy()
    flip = rng.random(labels.shape) < 0.1
    pred[flip] = (labels[flip] % 3) + 1
    return pred


def _add_prediction(viewer, pred):
    layer = viewer.add_labels(pred, name="prediction", scale=(VOXEL_UM,) * 3)
    apply_phases(layer, COMPOSITE_PHASES)
    return layer


def _widget(viewer, qtbot):
    w = EvaluateWidget(viewer)
    qtbot.addWidget(w.native)
    return w


def _finetuned(viewer, ann, axis, train, held, validation="slices"):
    """What the Fine-tune widget records in the state after a run (the core's plan and record)."""
    plan = FinetunePlan(
        phases=COMPOSITE_PHASES,
        replace_head=False,
        axis=axis,
        train_slices=tuple(train),
        validation_slices=tuple(held),
        validation=validation,
        counts=(1, 1, 1),
    )
    result = SimpleNamespace(plan=plan, held_out=held_out_voxels(plan, ann))
    state_for(viewer).set_finetune(result, "fine-tuned 1")


def test_jaccard_against_ground_truth_matches_core(sample_viewer, small_phantom, qtbot, wait_job):
    volume, truth = small_phantom
    pred = _corrupt(truth)
    pred[:, :2, :] = 0  # outside a mask: left out by default
    _add_prediction(sample_viewer, pred)
    w = _widget(sample_viewer, qtbot)
    assert w.prediction.layer is sample_viewer.layers["prediction"]
    assert w.reference.layer is sample_viewer.layers["ground truth"]
    assert w.image.layer is sample_viewer.layers["composite"]  # the baseline is on by default
    assert w.run()
    assert not w.controls.run_button.enabled  # disabled while the job runs
    assert wait_job(w.runner) is JobState.DONE
    assert w.controls.run_button.enabled

    r = w.result
    cm = confusion_matrix(pred, truth, 3, mask=pred > 0)
    np.testing.assert_array_equal(r.confusion, cm)
    expected = jaccard_from_confusion(cm)
    np.testing.assert_allclose(r.jaccard, expected)
    assert r.mean_jaccard == pytest.approx(float(np.nanmean(expected)))
    assert state_for(sample_viewer).last_evaluation is r  # shared: Export's report reads it
    # The table shows the same numbers (4 decimals); the confusion matrix the same counts.
    assert w.table.data[0, 0] == "matrix"
    assert float(w.table.data[1, 1]) == pytest.approx(expected[1], abs=5e-4)  # 3 decimals shown
    assert w.table.data[3, 0] == "mean"
    assert w.confusion_table.row_headers == ("matrix", "fibre", "pore")
    assert w.confusion_table.data[2, 3] == compact_number(cm[3, 3])  # e.g. "1.72 M"
    assert w.confusion_table.native.item(2, 3).toolTip() == f"{cm[3, 3]:,}"  # the exact count
    assert "Mean Jaccard" in w.summary.value and f"{r.n_evaluated:,}" in w.summary.value
    # Baseline fitted on the truth: the grey-level upper bound, computed by the core.
    grey = GreyLevelClassifier(3).fit(volume, truth).predict(volume)
    np.testing.assert_allclose(
        r.baseline_jaccard, jaccard_from_confusion(confusion_matrix(grey, truth, 3, mask=pred > 0))
    )
    # Fractions of the prediction and physical volumes from the layer scale (µm).
    np.testing.assert_allclose(r.prediction_fractions, phase_fractions(pred, 3))
    assert r.voxel_size == pytest.approx((VOXEL_UM,) * 3)
    header, rows = r.table()
    assert header[-1] == "volume (µm³)"
    assert rows[0][-1] == pytest.approx(np.count_nonzero(pred == 1) * VOXEL_UM**3)
    assert r.profile.shape == (truth.shape[0], 3)
    np.testing.assert_allclose(r.profile[5], phase_fractions(pred[5], 3))
    # The errors layer: exactly the misclassified voxels inside the mask, red, same scale.
    errors = sample_viewer.layers["errors"]
    expected_errors = (pred > 0) & (pred != truth)
    np.testing.assert_array_equal(errors.data.astype(bool), expected_errors)
    assert tuple(errors.scale) == pytest.approx((VOXEL_UM,) * 3)
    assert tuple(errors.colormap.map(np.array([1]))[0][:3]) == pytest.approx((1.0, 0.0, 0.0))
    assert len(w.plot.figure.axes[0].lines) == 3
    # The errors layer is never offered as a prediction or reference; evaluated layers stay chosen.
    assert sample_viewer.layers["errors"] not in w.reference.choices
    sample_viewer.add_labels(np.zeros_like(truth), name="annotations")
    assert w.reference.layer is sample_viewer.layers["ground truth"]


def test_reference_prefers_annotations_and_follows_new_layers(sample_viewer, small_phantom, qtbot):
    _, truth = small_phantom
    w = _widget(sample_viewer, qtbot)
    assert w.prediction.layer is None  # never the ground truth as a prediction
    assert w.reference.layer is sample_viewer.layers["ground truth"]
    _add_prediction(sample_viewer, truth.copy())
    assert w.prediction.layer is sample_viewer.layers["prediction"]
    assert w.reference.layer is sample_viewer.layers["ground truth"]
    ann = sample_viewer.add_labels(np.zeros_like(truth), name="annotations")
    assert w.reference.layer is ann  # created after docking: picked up, preferred
    assert w.prediction.layer is sample_viewer.layers["prediction"]


def test_held_out_slices_are_the_default_region(sample_viewer, small_phantom, qtbot, wait_job):
    _, truth = small_phantom
    pred = _corrupt(truth, seed=1)
    _add_prediction(sample_viewer, pred)
    ann = np.zeros_like(truth)
    for z in (2, 9, 15):
        ann[z] = truth[z]
    layer = sample_viewer.add_labels(ann, name="annotations")
    apply_phases(layer, COMPOSITE_PHASES)
    layer.metadata["tomoseg_held_out"] = {
        "axis": "z",
        "kind": "slices",
        "slices": [9],
        "train_slices": [2, 15],
        "model": "fine-tuned 3",
    }
    w = _widget(sample_viewer, qtbot)
    assert w.reference.layer is layer
    assert w.held_out_check.value and "9 along z" in w.held_out_check.text
    assert "fine-tuned 3" in w.held_out_check.text
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    only9 = np.zeros_like(truth)
    only9[9] = truth[9]
    expected = jaccard_from_confusion(confusion_matrix(pred, only9, 3))
    np.testing.assert_allclose(w.result.jaccard, expected)
    assert w.result.n_evaluated == truth[9].size
    assert "held-out slices 9" in w.result.region
    assert "outside the held-out" in w.result.baseline_note
    assert w.result.trained_on_voxels == 0 and "trained on" not in w.summary.value
    # Unchecked: all annotated voxels, with a warning that slices 2 and 15 were trained on.
    w.held_out_check.value = False
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    np.testing.assert_allclose(
        w.result.jaccard, jaccard_from_confusion(confusion_matrix(pred, ann, 3))
    )
    trained = 2 * truth[0].size
    assert w.result.trained_on_voxels == trained
    assert f"includes {trained:,} voxels the model was trained on: scores are optimistic" in (
        w.summary.value
    )


def test_copy_and_save_table(sample_viewer, small_phantom, qtbot, wait_job, tmp_path, monkeypatch):
    _, truth = small_phantom
    _add_prediction(sample_viewer, _corrupt(truth))
    w = _widget(sample_viewer, qtbot)
    assert not w.copy_button.enabled
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    assert w.copy_button.enabled and w.save_button.enabled
    w.copy_button.native.click()
    text = QApplication.clipboard().text()
    assert text.splitlines()[0].split("\t")[:2] == ["phase", "Jaccard U-Net"]
    assert text.splitlines()[1].startswith("matrix\t")

    target = tmp_path / "table.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    w.save_csv()
    lines = target.read_text().splitlines()
    assert lines[0].startswith("phase,Jaccard U-Net") and len(lines) == 5
    assert float(lines[1].split(",")[1]) == pytest.approx(w.result.jaccard[0])

    # An existing file is replaced only if the user says yes.
    target.write_text("keep me")
    asked = []
    monkeypatch.setattr(
        QMessageBox, "question", lambda *a, **k: asked.append(a) or QMessageBox.StandardButton.No
    )
    w.save_csv()
    assert asked and target.read_text() == "keep me"
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    w.save_csv()
    assert target.read_text().startswith("phase,")


def test_bad_input_notifies_and_leaves_layers(sample_viewer, small_phantom, qtbot, errors_seen):
    _, truth = small_phantom
    w = _widget(sample_viewer, qtbot)
    n_layers = len(sample_viewer.layers)
    assert not w.run()  # no prediction yet
    assert errors_seen and "no prediction layer" in errors_seen[-1]
    w.prediction.select("ground truth")  # the user picks the same layer twice
    assert not w.run()
    assert "same layer" in errors_seen[-1]
    # A shape mismatch.
    _add_prediction(sample_viewer, truth[:10].copy())
    n_layers += 1
    w.prediction.select("prediction")
    assert not w.run()
    assert "differ in shape" in errors_seen[-1]
    assert w.runner.state is JobState.IDLE and w.result is None
    assert len(sample_viewer.layers) == n_layers and "errors" not in sample_viewer.layers


def test_ids_outside_the_phase_table_fail_in_the_worker(
    sample_viewer, small_phantom, qtbot, wait_job, errors_seen
):
    _, truth = small_phantom
    pred = truth.copy()
    pred[0, 0, 0] = 7
    _add_prediction(sample_viewer, pred)
    w = _widget(sample_viewer, qtbot)
    assert w.run()
    assert wait_job(w.runner) is JobState.FAILED
    assert "outside 0..3" in errors_seen[-1]
    assert "errors" not in sample_viewer.layers and w.result is None
    assert state_for(sample_viewer).last_evaluation is None
    np.testing.assert_array_equal(sample_viewer.layers["prediction"].data, pred)


def test_held_out_slices_of_the_finetune_run(sample_viewer, small_phantom, qtbot, wait_job):
    _, truth = small_phantom
    pred = _corrupt(truth, seed=2)
    _add_prediction(sample_viewer, pred)
    ann = np.zeros_like(truth)
    ann[:, 10] = truth[:, 10]
    ann[:, 30] = truth[:, 30]
    sample_viewer.add_labels(ann, name="annotations")
    w = _widget(sample_viewer, qtbot)
    assert w.reference.layer.name == "annotations"
    assert not w.held_out_check.value and not w.held_out_check.enabled
    _finetuned(sample_viewer, ann, axis=1, train=(10,), held=(30,))  # a run just ended
    assert w.held_out_check.value and "30 along y" in w.held_out_check.text
    # A ground truth (annotated everywhere) is not what was trained on: scored whole.
    w.reference.select("ground truth")
    assert not w.held_out_check.value
    w.reference.select("annotations")
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    only = np.zeros_like(truth)
    only[:, 30] = truth[:, 30]
    np.testing.assert_array_equal(
        w.result.confusion, confusion_matrix(pred, only, 3, mask=pred > 0)
    )


def test_held_out_bands_of_the_finetune_run(sample_viewer, small_phantom, qtbot, wait_job):
    _, truth = small_phantom
    pred = _corrupt(truth, seed=3)
    _add_prediction(sample_viewer, pred)
    ann = np.zeros_like(truth)
    ann[4] = truth[4]
    ann[12, :, :40] = truth[12, :, :40]  # a partial slice: its band lies within the annotation
    sample_viewer.add_labels(ann, name="annotations")
    w = _widget(sample_viewer, qtbot)
    _finetuned(sample_viewer, ann, axis=0, train=(4, 12), held=(4, 12), validation="band")
    assert w.held_out_check.value and "bands of slices 4, 12" in w.held_out_check.text
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    held = np.zeros_like(truth)
    for z in (4, 12):
        band = band_mask(ann[z])
        held[z][band] = ann[z][band]
        assert 0 < band.sum() < ann[z].size  # a band, not the whole slice
    np.testing.assert_array_equal(
        w.result.confusion, confusion_matrix(pred, held, 3, mask=pred > 0)
    )
    assert "bands" in w.result.region and w.result.trained_on_voxels == 0
    record = state_for(sample_viewer).last_finetune.held_out
    np.testing.assert_array_equal(held > 0, held_out_mask(record, truth.shape) & (ann > 0))
    # The annotations change after the run: the band stays the one the run held out.
    painted = ann.copy()
    painted[12] = truth[12]
    sample_viewer.layers["annotations"].data = painted
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    now = np.where(held_out_mask(record, truth.shape), painted, 0)
    np.testing.assert_array_equal(w.result.confusion, confusion_matrix(pred, now, 3, mask=pred > 0))


def test_a_run_that_held_nothing_out_warns(sample_viewer, small_phantom, qtbot, wait_job):
    _, truth = small_phantom
    pred = _corrupt(truth, seed=4)
    _add_prediction(sample_viewer, pred)
    ann = np.zeros_like(truth)
    ann[3] = truth[3]
    layer = sample_viewer.add_labels(ann, name="annotations")
    layer.metadata["tomoseg_held_out"] = {
        "axis": "z",
        "kind": "none",
        "slices": [],
        "train_slices": [3],
        "model": "fine-tuned 1",
    }
    w = _widget(sample_viewer, qtbot)
    assert not w.held_out_check.enabled and not w.held_out_check.value
    assert "held none out" in w.held_out_check.text
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    assert w.result.n_evaluated == truth[3].size == w.result.trained_on_voxels
    assert "scores are optimistic" in w.summary.value
