"""The evaluate widget in a real viewer: Jaccard against core.metrics, errors layer, table export."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication, QFileDialog, QMessageBox

from napari_tomoseg._napari import _common, evaluate
from napari_tomoseg._napari._common import JobState, apply_phases
from napari_tomoseg._napari.evaluate import EvaluateWidget
from napari_tomoseg.core.measure.baseline import GreyLevelClassifier
from napari_tomoseg.core.measure.metrics import (
    confusion_matrix,
    jaccard_from_confusion,
    phase_fractions,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES

from .conftest import VOXEL_UM


@pytest.fixture
def wait_job(qtbot):
    """Wait until the runner leaves RUNNING. (Polls the state: waiting on ``worker.finished``
    misses a job that finished before the wait began, since the queued signal was emitted before
    the waiting slot was connected.)"""

    def wait(runner, timeout: int = 60_000):
        assert runner.worker is not None, "no job was started"
        qtbot.waitUntil(lambda: runner.state is not JobState.RUNNING, timeout=timeout)
        return runner.state

    return wait


@pytest.fixture
def errors_seen(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(evaluate, "notify_error", seen.append)
    monkeypatch.setattr(_common, "notify_error", seen.append)
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


def test_jaccard_against_ground_truth_matches_core(sample_viewer, small_phantom, qtbot, wait_job):
    volume, truth = small_phantom
    pred = _corrupt(truth)
    pred[:, :2, :] = 0  # outside a mask: left out by default
    _add_prediction(sample_viewer, pred)
    w = EvaluateWidget(sample_viewer)
    qtbot.addWidget(w)
    assert w.prediction_combo.currentText() == "prediction"
    assert w.reference_combo.currentText() == "ground truth"
    w.image_combo.set_layer("composite")
    w.run()
    assert not w.controls.run_button.isEnabled()  # disabled while the job runs
    assert wait_job(w.runner) is JobState.DONE
    assert w.controls.run_button.isEnabled()

    r = w.result
    cm = confusion_matrix(pred, truth, 3, mask=pred > 0)
    np.testing.assert_array_equal(r.confusion, cm)
    expected = jaccard_from_confusion(cm)
    np.testing.assert_allclose(r.jaccard, expected)
    assert r.mean_jaccard == pytest.approx(float(np.nanmean(expected)))
    # The table shows the same numbers (4 decimals).
    assert w.table.item(0, 0).text() == "matrix"
    assert float(w.table.item(1, 1).text()) == pytest.approx(expected[1], abs=1e-4)
    assert w.table.item(3, 0).text() == "mean"
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
    assert len(w.figure.axes[0].lines) == 3
    # New layers (errors, annotations) never replace the reference the user chose.
    assert w.reference_combo.currentText() == "ground truth"
    sample_viewer.add_labels(np.zeros_like(truth), name="annotations")
    assert w.reference_combo.currentText() == "ground truth"


def test_a_new_prediction_layer_is_picked_up(sample_viewer, small_phantom, qtbot):
    _, truth = small_phantom
    w = EvaluateWidget(sample_viewer)
    qtbot.addWidget(w)
    _add_prediction(sample_viewer, truth.copy())
    assert w.prediction_combo.currentText() == "prediction"
    assert w.reference_combo.currentText() == "ground truth"


def test_held_out_slices_are_the_default_region(sample_viewer, small_phantom, qtbot, wait_job):
    _, truth = small_phantom
    pred = _corrupt(truth, seed=1)
    _add_prediction(sample_viewer, pred)
    ann = np.zeros_like(truth)
    for z in (2, 9, 15):
        ann[z] = truth[z]
    layer = sample_viewer.add_labels(ann, name="annotations")
    apply_phases(layer, COMPOSITE_PHASES)
    layer.metadata["tomoseg_validation_slices"] = {"axis": 0, "slices": [9]}
    w = EvaluateWidget(sample_viewer)
    qtbot.addWidget(w)
    assert w.reference_combo.currentText() == "annotations"
    assert w.held_out_check.isChecked() and "9" in w.held_out_check.text()
    w.image_combo.set_layer("composite")
    w.run()
    assert wait_job(w.runner) is JobState.DONE
    only9 = np.zeros_like(truth)
    only9[9] = truth[9]
    expected = jaccard_from_confusion(confusion_matrix(pred, only9, 3))
    np.testing.assert_allclose(w.result.jaccard, expected)
    assert w.result.n_evaluated == truth[9].size
    assert "held-out slices 9" in w.result.region
    assert "outside the held-out" in w.result.baseline_note
    # Unchecked: all annotated voxels.
    w.held_out_check.setChecked(False)
    w.run()
    assert wait_job(w.runner) is JobState.DONE
    np.testing.assert_allclose(
        w.result.jaccard, jaccard_from_confusion(confusion_matrix(pred, ann, 3))
    )


def test_copy_and_save_table(sample_viewer, small_phantom, qtbot, wait_job, tmp_path, monkeypatch):
    _, truth = small_phantom
    _add_prediction(sample_viewer, _corrupt(truth))
    w = EvaluateWidget(sample_viewer)
    qtbot.addWidget(w)
    w.run()
    assert wait_job(w.runner) is JobState.DONE
    w.copy_table()
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
    w = EvaluateWidget(sample_viewer)
    qtbot.addWidget(w)
    n_layers = len(sample_viewer.layers)
    # Only one labels layer: prediction and reference are the same layer.
    w.run()
    assert errors_seen and "same layer" in errors_seen[-1]
    # A shape mismatch.
    _add_prediction(sample_viewer, truth[:10].copy())
    n_layers += 1
    w.prediction_combo.set_layer("prediction")
    w.reference_combo.set_layer("ground truth")
    w.run()
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
    w = EvaluateWidget(sample_viewer)
    qtbot.addWidget(w)
    w.run()
    assert wait_job(w.runner) is JobState.FAILED
    assert "outside 0..3" in errors_seen[-1]
    assert "errors" not in sample_viewer.layers and w.result is None
    np.testing.assert_array_equal(sample_viewer.layers["prediction"].data, pred)


class _FakeFinetune:
    """Stands in for the Fine-tune widget's state after a run (what evaluate reads)."""

    def __init__(self, layer, axis, slices):
        from types import SimpleNamespace

        self.annotations = SimpleNamespace(layer=lambda: layer)
        self.result = SimpleNamespace(plan=SimpleNamespace(axis=axis, validation_slices=slices))


def test_held_out_slices_of_the_finetune_run(sample_viewer, small_phantom, qtbot, wait_job):
    from napari_tomoseg._napari._common import session

    _, truth = small_phantom
    pred = _corrupt(truth, seed=2)
    _add_prediction(sample_viewer, pred)
    ann = np.zeros_like(truth)
    ann[:, 10] = truth[:, 10]
    ann[:, 30] = truth[:, 30]
    layer = sample_viewer.add_labels(ann, name="annotations")
    w = EvaluateWidget(sample_viewer)
    qtbot.addWidget(w)
    w.reference_combo.set_layer("annotations")
    assert not w.held_out_check.isChecked()
    ft = _FakeFinetune(layer, axis=1, slices=(30,))
    s = session(sample_viewer)
    s.widgets["finetune"] = ft
    s.add_model("fine-tuned 1", object())  # what the widget does when a run ends
    assert w.held_out_check.isChecked() and "30 along y" in w.held_out_check.text()
    w.run()
    assert wait_job(w.runner) is JobState.DONE
    only = np.zeros_like(truth)
    only[:, 30] = truth[:, 30]
    np.testing.assert_array_equal(
        w.result.confusion, confusion_matrix(pred, only, 3, mask=pred > 0)
    )
