"""The clean-up widget in a real viewer: blobs found, selected, highlighted, reassigned, undone."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tomoseg._napari import _common, cleanup
from napari_tomoseg._napari._common import JobState, apply_phases
from napari_tomoseg._napari.cleanup import SELECTION_LAYER, CleanupWidget
from napari_tomoseg.core.phases import COMPOSITE_PHASES

MATRIX, FIBRE, PORE = 1, 2, 3


@pytest.fixture
def wait_job(qtbot):
    def wait(runner, timeout: int = 60_000):
        assert runner.worker is not None, "no job was started"
        qtbot.waitUntil(lambda: runner.state is not JobState.RUNNING, timeout=timeout)
        return runner.state

    return wait


@pytest.fixture
def errors_seen(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(cleanup, "notify_error", seen.append)
    monkeypatch.setattr(_common, "notify_error", seen.append)
    return seen


def _labels():
    v = np.full((4, 30, 40), MATRIX, dtype=np.uint8)
    v[0, 3:6, 3:6] = PORE  # 9 px round pore
    v[1, 20, 2:38] = PORE  # 36 px streak (ring artifact)
    v[2, 10:12, 5:35] = PORE  # 60 px, aspect 15
    v[3, 5:9, 5:9] = PORE  # 16 px square
    return v


@pytest.fixture
def viewer_with_prediction(make_napari_viewer):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(_labels(), name="prediction", scale=(2.0, 1.0, 1.0))
    apply_phases(layer, COMPOSITE_PHASES)
    return viewer


def test_find_select_highlight_reassign_undo(viewer_with_prediction, qtbot, wait_job):
    viewer = viewer_with_prediction
    layer = viewer.layers["prediction"]
    original = layer.data.copy()
    w = CleanupWidget(viewer)
    qtbot.addWidget(w)
    assert w.layer_combo.currentText() == "prediction"
    assert w.phase_combo.currentText() == "pore"  # the pore phase is the default
    w.min_area.setValue(20)
    w.min_aspect.setValue(5)
    w.analyse()
    assert wait_job(w.runner) is JobState.DONE
    assert len(w.blobs) == 4
    assert w.blobs.area.tolist() == [9, 36, 60, 16]
    assert w.selection.tolist() == [False, True, True, False]
    assert "2 of 4 blobs selected (96 voxels)" in w.summary.text()
    # Scatter plot on log axes, one point per blob.
    assert w.ax.get_xscale() == "log" and w.ax.get_yscale() == "log"
    assert w._scatter.get_offsets().shape == (4, 2)
    # Highlight layer: exactly the selected blobs, with the layer's scale.
    sel = viewer.layers[SELECTION_LAYER]
    expected = np.zeros_like(original)
    expected[1, 20, 2:38] = 1
    expected[2, 10:12, 5:35] = 1
    np.testing.assert_array_equal(sel.data, expected)
    assert tuple(sel.scale) == (2.0, 1.0, 1.0)
    # Thresholds update the selection live.
    w.min_area.setValue(50)
    assert w.selection.tolist() == [False, False, True, False]
    w.min_area.setValue(20)

    w.to_combo.setCurrentText("matrix")
    w.reassign()
    wait_job(w.runner)  # the re-analysis after the edit
    assert (layer.data[1, 20, 2:38] == MATRIX).all() and (
        layer.data[2, 10:12, 5:35] == MATRIX
    ).all()
    assert (layer.data[0, 3:6, 3:6] == PORE).all()
    assert np.count_nonzero(layer.data != original) == 96
    assert len(w.blobs) == 2  # re-analysed
    # Our Undo button puts the voxels back ...
    assert w.undo_button.isEnabled()
    w.undo()
    wait_job(w.runner)
    np.testing.assert_array_equal(layer.data, original)
    assert not w.undo_button.isEnabled()


def test_reassign_is_in_napari_history(viewer_with_prediction, qtbot, wait_job):
    viewer = viewer_with_prediction
    layer = viewer.layers["prediction"]
    original = layer.data.copy()
    w = CleanupWidget(viewer)
    qtbot.addWidget(w)
    w.min_area.setValue(30)
    w.min_aspect.setValue(5)
    w.analyse()
    wait_job(w.runner)
    w.reassign()  # default: the surrounding phase (matrix here)
    wait_job(w.runner)
    assert np.count_nonzero(layer.data != original) == 96
    layer.undo()  # napari's own Ctrl+Z
    np.testing.assert_array_equal(layer.data, original)


def test_lasso_selection(viewer_with_prediction, qtbot, wait_job):
    w = CleanupWidget(viewer_with_prediction)
    qtbot.addWidget(w)
    w.analyse()
    wait_job(w.runner)
    # A box around the two small, round blobs (area 9 and 16, aspect 1).
    w.select_polygon(np.array([[5, 0.8], [25, 0.8], [25, 1.5], [5, 1.5]]))
    assert w.selection.tolist() == [True, False, False, True]
    assert viewer_with_prediction.layers[SELECTION_LAYER].data.sum() == 25


def test_edited_labels_need_a_new_analysis(viewer_with_prediction, qtbot, wait_job, errors_seen):
    layer = viewer_with_prediction.layers["prediction"]
    w = CleanupWidget(viewer_with_prediction)
    qtbot.addWidget(w)
    w.min_area.setValue(30)
    w.min_aspect.setValue(5)
    w.analyse()
    wait_job(w.runner)
    layer.data[1, 5, 5] = PORE  # painted after the analysis: a new blob in a selected slice
    before = layer.data.copy()
    w.reassign()
    assert errors_seen and "changed since" in errors_seen[-1]
    np.testing.assert_array_equal(layer.data, before)
    assert not w.reassign_button.isEnabled()


def test_no_layer_notifies(make_napari_viewer, qtbot, errors_seen):
    viewer = make_napari_viewer()
    w = CleanupWidget(viewer)
    qtbot.addWidget(w)
    w.analyse()
    assert errors_seen and "no labels layer" in errors_seen[-1]
    assert w.runner.state is JobState.IDLE and len(viewer.layers) == 0
