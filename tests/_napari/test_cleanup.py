"""The clean-up widget in a real viewer: blobs found, selected, highlighted, reassigned, undone."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tomoseg._napari import notify
from napari_tomoseg._napari.cleanup import SELECTION_LAYER, CleanupWidget
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.layers import apply_phases
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable

MATRIX, FIBRE, PORE = 1, 2, 3


@pytest.fixture
def errors_seen(monkeypatch):
    seen: list[str] = []
    monkeypatch.setattr(notify, "show_error", seen.append)
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
    qtbot.addWidget(w.native)
    assert w.labels_layer.layer is layer
    assert w.phase.value == "pore"  # the pore phase is the default
    assert w.to.choices == ("(surrounding phase)", "matrix", "fibre", "pore")
    w.min_area.value = 20
    w.min_aspect.value = 5
    w.controls.run_button.native.click()
    assert wait_job(w.runner) is JobState.DONE
    assert len(w.blobs) == 4
    assert w.blobs.area.tolist() == [9, 36, 60, 16]
    assert w.selection.tolist() == [False, True, True, False]
    assert "2 of 4 blobs selected (96 voxels)" in w.summary.value
    # Scatter plot on log axes, one point per blob.
    ax = w.scatter.ax
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert w.scatter.points.get_offsets().shape == (4, 2)
    colours = w.scatter.points.get_facecolors()
    assert [tuple(c) for c in colours[:, :3]] == [
        (0.3, 0.45, 0.7),
        (1, 0, 1),
        (1, 0, 1),
        (0.3, 0.45, 0.7),
    ]
    # Highlight layer: exactly the selected blobs, with the layer's scale.
    sel = viewer.layers[SELECTION_LAYER]
    expected = np.zeros_like(original)
    expected[1, 20, 2:38] = 1
    expected[2, 10:12, 5:35] = 1
    np.testing.assert_array_equal(sel.data, expected)
    assert tuple(sel.scale) == (2.0, 1.0, 1.0)
    # Thresholds update the selection live.
    w.min_area.value = 50
    assert w.selection.tolist() == [False, False, True, False]
    w.min_area.value = 20

    w.to.value = "matrix"
    w.reassign_button.native.click()
    wait_job(w.runner)  # the re-analysis after the edit
    assert (layer.data[1, 20, 2:38] == MATRIX).all() and (
        layer.data[2, 10:12, 5:35] == MATRIX
    ).all()
    assert (layer.data[0, 3:6, 3:6] == PORE).all()
    assert np.count_nonzero(layer.data != original) == 96
    assert len(w.blobs) == 2  # re-analysed
    # Our Undo button puts the voxels back ...
    assert w.undo_button.enabled
    w.undo_button.native.click()
    wait_job(w.runner)
    np.testing.assert_array_equal(layer.data, original)
    assert not w.undo_button.enabled


def test_reassign_is_in_napari_history(viewer_with_prediction, qtbot, wait_job):
    viewer = viewer_with_prediction
    layer = viewer.layers["prediction"]
    original = layer.data.copy()
    w = CleanupWidget(viewer)
    qtbot.addWidget(w.native)
    w.min_area.value = 30
    w.min_aspect.value = 5
    w.analyse()
    wait_job(w.runner)
    w.reassign()  # default: the surrounding phase (matrix here)
    wait_job(w.runner)
    assert np.count_nonzero(layer.data != original) == 96
    layer.undo()  # napari's own Ctrl+Z
    np.testing.assert_array_equal(layer.data, original)


def test_lasso_selection(viewer_with_prediction, qtbot, wait_job):
    w = CleanupWidget(viewer_with_prediction)
    qtbot.addWidget(w.native)
    w.analyse()
    wait_job(w.runner)
    # A box around the two small, round blobs (area 9 and 16, aspect 1).
    w.select_polygon(np.array([[5, 0.8], [25, 0.8], [25, 1.5], [5, 1.5]]))
    assert w.selection.tolist() == [True, False, False, True]
    assert viewer_with_prediction.layers[SELECTION_LAYER].data.sum() == 25


def test_edited_labels_need_a_new_analysis(viewer_with_prediction, qtbot, wait_job, errors_seen):
    layer = viewer_with_prediction.layers["prediction"]
    w = CleanupWidget(viewer_with_prediction)
    qtbot.addWidget(w.native)
    w.min_area.value = 30
    w.min_aspect.value = 5
    w.analyse()
    wait_job(w.runner)
    layer.data[1, 5, 5] = PORE  # painted after the analysis: a new blob in a selected slice
    before = layer.data.copy()
    w.reassign()
    assert errors_seen and "changed since" in errors_seen[-1]
    np.testing.assert_array_equal(layer.data, before)
    assert not w.reassign_button.enabled


def test_no_layer_notifies(make_napari_viewer, qtbot, errors_seen):
    viewer = make_napari_viewer()
    w = CleanupWidget(viewer)
    qtbot.addWidget(w.native)
    assert not w.analyse()
    assert errors_seen and "no labels layer" in errors_seen[-1]
    assert w.runner.state is JobState.IDLE and len(viewer.layers) == 0


def test_never_picks_the_ground_truth_and_follows_new_layers(make_napari_viewer, qtbot):
    from napari_tomoseg._napari.layers import layer_phases

    viewer = make_napari_viewer()
    gt = viewer.add_labels(_labels(), name="ground truth")
    w = CleanupWidget(viewer)
    qtbot.addWidget(w.native)
    assert w.labels_layer.layer is None
    assert w.phase.choices == ("matrix", "fibre", "pore")  # the viewer's phase table
    pred = viewer.add_labels(_labels(), name="prediction")
    two = PhaseTable.from_names(["solid", "void"])
    apply_phases(pred, two)
    assert w.labels_layer.layer is pred and layer_phases(pred) == two
    qtbot.waitUntil(lambda: w.phase.choices == ("solid", "void"), timeout=2000)
    assert w.phase.value == "void" and w.to.choices == ("(surrounding phase)", "solid", "void")
    w.labels_layer.select(gt)
    assert w.labels_layer.layer is gt


def test_says_what_it_does_and_hides_the_slicing_axis(viewer_with_prediction, qtbot):
    w = CleanupWidget(viewer_with_prediction)
    qtbot.addWidget(w.native)
    w.native.show()
    assert "Remove blobs of a phase by area and aspect ratio" in w.title.value
    assert "surrounds" in w.help.value and "elongated" in w.help.value
    assert w.advanced.expanded is False and not w.axis.native.isVisible()
    assert w.min_area.native.isVisible() and w.min_aspect.native.isVisible()


def test_phase_survives_napari_resetting_choices(viewer_with_prediction, qtbot) -> None:
    w = CleanupWidget(viewer_with_prediction)
    qtbot.addWidget(w.native)
    w.phase.value = "fibre"
    viewer_with_prediction.add_labels(np.zeros((4, 8, 8), np.uint8), name="blob selection")
    w.reset_choices()
    assert w.phase.value == "fibre"
    assert w.to.choices == ("(surrounding phase)", "matrix", "fibre", "pore")
