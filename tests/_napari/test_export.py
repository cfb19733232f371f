"""The export widget in a real viewer: label TIFF with phase names, probabilities, report, no silent overwrite."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from qtpy.QtWidgets import QFileDialog, QMessageBox

from napari_tomoseg._napari import _common, export
from napari_tomoseg._napari._common import JobState, apply_phases
from napari_tomoseg._napari.evaluate import EvaluateWidget
from napari_tomoseg._napari.export import ExportWidget
from napari_tomoseg.core import io
from napari_tomoseg.core.measure.metrics import jaccard_per_phase, phase_fractions
from napari_tomoseg.core.phases import COMPOSITE_PHASES

from .conftest import VOXEL_UM


@pytest.fixture
def errors_seen(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(export, "notify_error", seen.append)
    monkeypatch.setattr(_common, "notify_error", seen.append)
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


def test_export_labels_and_report(sample_viewer, small_phantom, qtbot, tmp_path):
    _, truth = small_phantom
    layer = _prediction(sample_viewer, truth)
    w = ExportWidget(sample_viewer)
    qtbot.addWidget(w)
    w.layer_combo.set_layer("prediction")
    w.path_edit.setText(str(tmp_path / "pred.tif"))
    assert w.export()
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


def test_report_holds_the_last_evaluation(sample_viewer, small_phantom, qtbot, tmp_path):
    _, truth = small_phantom
    layer = _prediction(sample_viewer, truth)
    ev = EvaluateWidget(sample_viewer)
    qtbot.addWidget(ev)
    ev.run()
    qtbot.waitUntil(lambda: ev.runner.state is not JobState.RUNNING, timeout=60_000)
    assert ev.runner.state is JobState.DONE
    w = ExportWidget(sample_viewer)
    qtbot.addWidget(w)
    w.layer_combo.set_layer("prediction")
    w.path_edit.setText(str(tmp_path / "pred.tif"))
    assert w.export()
    report = json.loads((tmp_path / "pred-report.json").read_text())
    expected = jaccard_per_phase(layer.data, truth, 3)
    assert [p["jaccard"] for p in report["phases"]] == pytest.approx(expected.tolist())
    assert report["evaluation"]["reference"] == "ground truth"
    assert report["evaluation"]["mean_jaccard"] == pytest.approx(float(np.mean(expected)))


def test_probabilities_are_written(sample_viewer, small_phantom, qtbot, tmp_path):
    _, truth = small_phantom
    _prediction(sample_viewer, truth)
    probs = np.random.default_rng(0).random((3, *truth.shape)).astype(np.float32)
    sample_viewer.add_image(probs, name="probabilities")
    w = ExportWidget(sample_viewer)
    qtbot.addWidget(w)
    w.layer_combo.set_layer("prediction")
    w.probabilities_combo.set_layer("probabilities")
    w.report_check.setChecked(False)
    w.path_edit.setText(str(tmp_path / "pred.tif"))
    assert w.export()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "pred-probabilities.tif"), probs)
    assert not (tmp_path / "pred-report.json").exists()


def test_existing_files_are_replaced_only_when_the_user_agrees(
    sample_viewer, small_phantom, qtbot, tmp_path, answer
):
    _, truth = small_phantom
    layer = _prediction(sample_viewer, truth)
    target = tmp_path / "pred.tif"
    target.write_bytes(b"precious")
    w = ExportWidget(sample_viewer)
    qtbot.addWidget(w)
    w.layer_combo.set_layer("prediction")
    w.path_edit.setText(str(target))
    asked = answer(False)
    assert not w.export()
    assert len(asked) == 1 and "pred.tif" in asked[0]
    assert target.read_bytes() == b"precious"
    assert not (tmp_path / "pred-report.json").exists()  # nothing at all was written
    asked = answer(True)
    assert w.export()
    np.testing.assert_array_equal(io.read_labels(target), layer.data)


def test_browse_asks_once(sample_viewer, small_phantom, qtbot, tmp_path, answer, monkeypatch):
    _, truth = small_phantom
    _prediction(sample_viewer, truth)
    target = tmp_path / "pred.tif"
    target.write_bytes(b"old")
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    w = ExportWidget(sample_viewer)
    qtbot.addWidget(w)
    w.layer_combo.set_layer("prediction")
    w.report_check.setChecked(False)
    asked = answer(True)
    w._browse()
    assert w.path_edit.text() == str(target) and len(asked) == 1
    assert w.export()
    assert len(asked) == 1  # the Browse dialog's answer covers the label file
    assert io.read_labels(target).shape == truth.shape


def test_bad_input_notifies_and_writes_nothing(
    sample_viewer, small_phantom, qtbot, tmp_path, errors_seen
):
    _, truth = small_phantom
    w = ExportWidget(sample_viewer)
    qtbot.addWidget(w)
    w.layer_combo.set_layer("ground truth")
    assert not w.export()
    assert "choose an output file" in errors_seen[-1]
    bad = truth.copy()
    bad[0, 0, 0] = 9
    layer = sample_viewer.add_labels(bad, name="bad")
    apply_phases(layer, COMPOSITE_PHASES)
    w.layer_combo.set_layer("bad")
    w.path_edit.setText(str(tmp_path / "bad.tif"))
    assert not w.export()
    assert "holds id 9" in errors_seen[-1]
    w.path_edit.setText(str(tmp_path / "no-such-folder" / "x.tif"))
    w.layer_combo.set_layer("ground truth")
    assert not w.export()
    assert "folder" in errors_seen[-1]
    assert list(tmp_path.iterdir()) == []
