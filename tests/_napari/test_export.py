"""The export widget in a real viewer: label TIFF with phase names, probabilities, report, no silent overwrite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_tomoseg._napari import notify
from napari_tomoseg._napari.evaluate import EvaluateWidget
from napari_tomoseg._napari.export import ExportWidget
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.layers import apply_phases
from napari_tomoseg._napari.state import state_for
from napari_tomoseg.core import io
from napari_tomoseg.core.measure.metrics import jaccard_per_phase, phase_fractions
from napari_tomoseg.core.phases import COMPOSITE_PHASES

from .conftest import VOXEL_UM


@pytest.fixture
def errors_seen(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(notify, "show_error", seen.append)
    return seen


@pytest.fixture
def answer(monkeypatch):
    """Patch the overwrite question; records how often it was asked."""
    asked: list[str] = []

    def set_answer(yes: bool) -> list[str]:
        button = QMessageBox.StandardButton.Yes if yes else QMessageBox.StandardButton.No
        monkeypatch.setattr(
            QMessageBox,
            "question",
            lambda _parent, _title, text, *a, **k: asked.append(text) or button,
        )
        return asked

    return set_answer


def _prediction(viewer, truth):
    pred = truth.copy()
    pred[:, :4] = 2  # a band of wrong "fibre"
    layer = viewer.add_labels(pred, name="prediction", scale=(VOXEL_UM,) * 3)
    apply_phases(layer, COMPOSITE_PHASES)
    layer.metadata["tomoseg_model"] = "composite-2d.safetensors"
    layer.metadata["tomoseg_provenance"] = {"trained_on": "synthetic phantoms"}
    return layer


def _widget(viewer, qtbot):
    w = ExportWidget(viewer)
    qtbot.addWidget(w.native)
    return w


def test_prefers_the_prediction_never_the_ground_truth(sample_viewer, small_phantom, qtbot):
    _, truth = small_phantom
    w = _widget(sample_viewer, qtbot)
    assert w.labels_layer.layer is None  # only the ground truth: nothing chosen on its own
    sample_viewer.add_labels(np.zeros_like(truth), name="annotations")
    assert w.labels_layer.layer is sample_viewer.layers["annotations"]
    layer = _prediction(sample_viewer, truth)
    assert w.labels_layer.layer is layer  # a prediction made after docking is picked up
    w.labels_layer.select("ground truth")  # the user may still choose it
    assert w.labels_layer.layer is sample_viewer.layers["ground truth"]


def test_export_labels_and_report(sample_viewer, small_phantom, qtbot, tmp_path, wait_job):
    _, truth = small_phantom
    layer = _prediction(sample_viewer, truth)
    w = _widget(sample_viewer, qtbot)
    assert w.labels_layer.layer is layer
    w.path.value = str(tmp_path / "pred.tif")
    w.export_button.native.click()
    assert wait_job(w.runner) is JobState.DONE
    back = io.read_labels(tmp_path / "pred.tif")
    np.testing.assert_array_equal(back, layer.data)
    assert back.dtype == np.uint8
    assert io.read_label_phases(tmp_path / "pred.tif") == COMPOSITE_PHASES
    assert io.read_voxel_size(tmp_path / "pred.tif") == pytest.approx((VOXEL_UM,) * 3)
    report = json.loads((tmp_path / "pred-report.json").read_text())
    fr = phase_fractions(layer.data, 3)
    assert [p["name"] for p in report["phases"]] == ["matrix", "fibre", "pore"]
    assert report["phases"][1]["fraction"] == pytest.approx(fr[1])
    assert report["phases"][0]["volume_um3"] == pytest.approx(
        np.count_nonzero(layer.data == 1) * VOXEL_UM**3
    )
    assert report["model"] == {
        "name": "composite-2d.safetensors",
        "provenance": {"trained_on": "synthetic phantoms"},
    }
    assert "evaluation" not in report
    csv_lines = (tmp_path / "pred-report.csv").read_text().splitlines()
    assert csv_lines[0] == "phase_id,phase,voxels,fraction,volume_um3,jaccard"
    assert csv_lines[2].startswith("2,fibre,")
    assert "pred.tif" in w.status.value and not (tmp_path / "pred-probabilities.tif").exists()


def test_report_holds_the_last_evaluation(sample_viewer, small_phantom, qtbot, tmp_path, wait_job):
    _, truth = small_phantom
    layer = _prediction(sample_viewer, truth)
    ev = EvaluateWidget(sample_viewer)
    qtbot.addWidget(ev.native)
    assert ev.run()
    assert wait_job(ev.runner) is JobState.DONE
    w = _widget(sample_viewer, qtbot)
    w.path.value = str(tmp_path / "pred.tif")
    assert w.export()
    assert wait_job(w.runner) is JobState.DONE
    report = json.loads((tmp_path / "pred-report.json").read_text())
    expected = jaccard_per_phase(layer.data, truth, 3)
    assert [p["jaccard"] for p in report["phases"]] == pytest.approx(expected.tolist())
    assert report["evaluation"]["reference"] == "ground truth"
    assert report["evaluation"]["mean_jaccard"] == pytest.approx(float(np.mean(expected)))
    # An evaluation of another layer is not this layer's: left out of its report.
    other = sample_viewer.add_labels(truth.copy(), name="other")
    apply_phases(other, COMPOSITE_PHASES)
    w.labels_layer.select(other)
    w.path.value = str(tmp_path / "other.tif")
    assert w.export()
    assert wait_job(w.runner) is JobState.DONE
    assert state_for(sample_viewer).last_evaluation is ev.result
    assert "evaluation" not in json.loads((tmp_path / "other-report.json").read_text())


def test_probabilities_are_written(sample_viewer, small_phantom, qtbot, tmp_path, wait_job):
    _, truth = small_phantom
    _prediction(sample_viewer, truth)
    probs = np.random.default_rng(0).random((3, *truth.shape)).astype(np.float32)
    sample_viewer.add_image(probs, name="probabilities")
    sample_viewer.add_image(np.zeros((3, 4, 8, 8), np.float32), name="other maps")
    w = _widget(sample_viewer, qtbot)
    assert w.probabilities.layer is sample_viewer.layers["probabilities"]
    assert sample_viewer.layers["other maps"] not in w.probabilities.choices  # not these labels
    assert not w.write_probabilities.value  # written only when asked for
    w.write_probabilities.value = True
    w.report_check.value = False
    w.path.value = str(tmp_path / "pred.tif")
    assert w.export()
    assert wait_job(w.runner) is JobState.DONE
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "pred-probabilities.tif"), probs)
    assert not (tmp_path / "pred-report.json").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


def test_existing_files_are_replaced_only_when_the_user_agrees(
    sample_viewer, small_phantom, qtbot, tmp_path, answer, wait_job
):
    _, truth = small_phantom
    layer = _prediction(sample_viewer, truth)
    target = tmp_path / "pred.tif"
    target.write_bytes(b"precious")
    w = _widget(sample_viewer, qtbot)
    w.path.value = str(target)
    asked = answer(False)
    assert not w.export()
    assert len(asked) == 1 and "pred.tif" in asked[0]
    assert target.read_bytes() == b"precious"
    assert not (tmp_path / "pred-report.json").exists()  # nothing at all was written
    assert w.runner.state is JobState.IDLE
    asked = answer(True)
    assert w.export()
    assert wait_job(w.runner) is JobState.DONE
    np.testing.assert_array_equal(io.read_labels(target), layer.data)


def test_browse_asks_once(
    sample_viewer, small_phantom, qtbot, tmp_path, answer, monkeypatch, wait_job
):
    _, truth = small_phantom
    _prediction(sample_viewer, truth)
    target = tmp_path / "pred.tif"
    target.write_bytes(b"old")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    w = _widget(sample_viewer, qtbot)
    w.report_check.value = False
    asked = answer(True)
    w.browse_button.native.click()
    assert w.path.value == str(target) and len(asked) == 1
    assert w.export()
    assert wait_job(w.runner) is JobState.DONE
    assert len(asked) == 1  # the Browse dialog's answer covers the label file
    assert io.read_labels(target).shape == truth.shape


def test_bad_input_notifies_and_writes_nothing(
    sample_viewer, small_phantom, qtbot, tmp_path, errors_seen, wait_job
):
    _, truth = small_phantom
    w = _widget(sample_viewer, qtbot)
    assert not w.export()
    assert "no labels layer" in errors_seen[-1]
    w.labels_layer.select("ground truth")
    assert not w.export()
    assert "choose an output file" in errors_seen[-1]
    bad = truth.copy()
    bad[0, 0, 0] = 9
    layer = sample_viewer.add_labels(bad, name="bad")
    apply_phases(layer, COMPOSITE_PHASES)
    w.labels_layer.select("bad")
    w.path.value = str(tmp_path / "bad.tif")
    assert w.export()  # the ids are checked in the worker, before anything is written
    assert wait_job(w.runner) is JobState.FAILED
    assert "holds id 9" in errors_seen[-1]
    w.path.value = str(tmp_path / "no-such-folder" / "x.tif")
    w.labels_layer.select("ground truth")
    assert not w.export()
    assert "folder" in errors_seen[-1]
    assert list(tmp_path.iterdir()) == []


def test_prefers_the_newest_segmentation_whatever_its_name(sample_viewer, small_phantom, qtbot):
    _, truth = small_phantom
    w = _widget(sample_viewer, qtbot)
    sample_viewer.add_labels(np.zeros_like(truth), name="annotations")
    older = sample_viewer.add_labels(truth.copy(), name="scan run 1")
    older.metadata["tomoseg_model"] = "bundled"  # what the Segment widget records
    newer = sample_viewer.add_labels(truth.copy(), name="scan run 2")
    newer.metadata["tomoseg_model"] = "fine-tuned.safetensors"
    sample_viewer.add_labels(np.zeros_like(truth), name="other labels")
    w.labels_layer.refresh()
    assert w.labels_layer.layer is newer  # not the annotations, the ground truth or other labels
