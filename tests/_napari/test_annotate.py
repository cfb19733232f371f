"""The Annotate widget: phase table, painting keys, copy prediction, import, counts, autosave, next slice."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from magicgui.widgets import Container

from napari_tomoseg._napari import notify
from napari_tomoseg._napari.annotate import ANNOTATIONS, AnnotateWidget, RemapDialog, autosave_path
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.state import state_for
from napari_tomoseg.core.measure.uncertainty import SliceScoreAccumulator
from napari_tomoseg.core.phases import PhaseTable


@pytest.fixture
def errors(monkeypatch):
    shown = []
    monkeypatch.setattr(notify, "show_error", shown.append)
    return shown


@pytest.fixture
def widget(sample_viewer, qtbot):
    w = AnnotateWidget(sample_viewer)
    qtbot.addWidget(w.native)
    return w


def test_is_a_magicgui_widget_with_an_image_picker(sample_viewer, widget):
    assert isinstance(widget, Container)
    assert widget.image.layer is sample_viewer.layers["composite"]
    assert [widget.table.data[r, 1] for r in range(3)] == ["matrix", "fibre", "pore"]


def test_layer_phase_table_and_keys(sample_viewer, widget, errors):
    layer = widget.ensure_layer()
    assert layer.name == ANNOTATIONS and layer.data.dtype == np.uint8 and not layer.data.any()
    assert layer.scale.tolist() == pytest.approx([1.3] * 3)
    assert list(layer.features["phase"]) == ["none", "matrix", "fibre", "pore"]
    widget.table.native.cellClicked.emit(1, 1)  # click "fibre"
    assert layer.selected_label == 2 and layer.mode == "paint"
    from app_model.types import KeyBinding

    widget.keys.value = True  # number keys paint phases only while the user says so
    layer.keymap[KeyBinding.from_str("3")](layer)  # number key
    assert layer.selected_label == 3
    widget.table.native.item(0, 1).setText("polyamide")  # as if typed in the table
    assert widget.phases.names == ("polyamide", "fibre", "pore")
    assert state_for(sample_viewer).phases.names[0] == "polyamide"  # shared with other widgets
    assert list(layer.features["phase"])[1] == "polyamide"
    widget.table.native.item(1, 1).setText("polyamide")  # duplicate: refused, table restored
    assert widget.phases.names == ("polyamide", "fibre", "pore")
    assert widget.table.data[1, 1] == "fibre"
    assert "unique" in errors[-1]
    widget.add_phase.native.click()
    assert len(widget.phases) == 4 and widget.table.shape[0] == 4
    widget.recolour(4, "#123456")
    assert widget.phases.phases[3].colour == "#123456"
    np.testing.assert_allclose(
        layer.colormap.map(np.array([4]))[0][:3], [0x12 / 255, 0x34 / 255, 0x56 / 255]
    )
    layer.data[0, 0, 0] = 4
    widget.remove_phase.native.click()
    assert len(widget.phases) == 4 and "holds annotations" in errors[-1]


def test_create_button_makes_the_layer(sample_viewer, widget):
    assert ANNOTATIONS not in sample_viewer.layers
    widget.create.native.click()
    assert widget.layer is sample_viewer.layers[ANNOTATIONS]
    assert widget.layer.metadata["tomoseg_image"] == "composite"


def test_copy_prediction_into_unannotated_voxels(sample_viewer, widget, small_phantom):
    _, truth = small_phantom
    sample_viewer.add_labels(truth.copy(), name="prediction")
    layer = widget.ensure_layer()
    layer.data[5, :10, :10] = 3
    sample_viewer.dims.set_current_step(0, 5)
    n = widget.copy_prediction_slice()
    assert (layer.data[5, :10, :10] == 3).all()  # kept the user's correction
    rest = np.ones((64, 64), bool)
    rest[:10, :10] = False
    np.testing.assert_array_equal(layer.data[5][rest], truth[5][rest])
    assert n == int((truth[5][rest] > 0).sum())
    assert "z=5" in widget.controls.status.value
    assert not layer.data[4].any() and not layer.data[6].any()
    widget.overwrite.value = True
    widget.copy_prediction.native.click()
    np.testing.assert_array_equal(layer.data[5], truth[5])
    layer.undo()
    assert (layer.data[5, :10, :10] == 3).all()


def test_copy_along_another_axis(sample_viewer, widget, small_phantom):
    _, truth = small_phantom
    sample_viewer.add_labels(truth.copy(), name="prediction")
    layer = widget.ensure_layer()
    widget.axis.value = "y"
    sample_viewer.dims.set_current_step(1, 20)
    assert widget.copy_prediction_slice() == int((truth[:, 20] > 0).sum())
    np.testing.assert_array_equal(layer.data[:, 20], truth[:, 20])
    assert np.count_nonzero(layer.data) == np.count_nonzero(truth[:, 20])


def test_import_foreign_ids_through_the_dialog(
    sample_viewer, widget, tmp_path, monkeypatch, wait_job
):
    foreign = np.zeros((24, 64, 64), np.uint8)
    foreign[2, :5] = 128
    foreign[2, 5:9] = 255
    foreign[3] = 60  # a fourth id: 0/60/128/255 = background + three phases
    path = tmp_path / "other_tool.tif"
    tifffile.imwrite(path, foreign, photometric="minisblack")
    seen = {}

    def accept(self):
        seen["choices"] = {i: c.value for i, c in self.combos.items()}
        seen["mapping"] = self.mapping()
        return True

    monkeypatch.setattr(RemapDialog, "exec", accept)
    layer = widget.ensure_layer()
    layer.data[10, 0, 0] = 1  # existing annotations elsewhere stay
    assert widget.import_file(path)
    assert wait_job(widget.runner) is JobState.DONE
    assert seen["mapping"] == {0: 0, 60: 1, 128: 2, 255: 3}
    assert seen["choices"] == {0: "not annotated", 60: "matrix", 128: "fibre", 255: "pore"}
    assert (layer.data[2, :5] == 2).all() and (layer.data[2, 5:9] == 3).all()
    assert (layer.data[3] == 1).all() and layer.data[10, 0, 0] == 1


def test_import_cancelled_changes_nothing(sample_viewer, widget, tmp_path, monkeypatch, wait_job):
    path = tmp_path / "labels.tif"
    tifffile.imwrite(path, np.ones((24, 64, 64), np.uint8), photometric="minisblack")
    monkeypatch.setattr(RemapDialog, "exec", lambda self: False)
    layer = widget.ensure_layer()
    assert widget.import_file(path)
    assert wait_job(widget.runner) is JobState.DONE
    assert not layer.data.any()


def test_import_refuses_other_shapes(sample_viewer, widget, tmp_path, wait_job, errors):
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, np.ones((3, 8, 8), np.uint8), photometric="minisblack")
    widget.ensure_layer()
    widget.import_file(path, mapping={1: 1})
    assert wait_job(widget.runner) is JobState.FAILED
    assert "shape (3, 8, 8)" in errors[-1]
    assert not widget.layer.data.any()


def test_counts_per_phase(sample_viewer, widget, qtbot):
    layer = widget.ensure_layer()
    data = layer.data.copy()
    data[1, :2, :3] = 1  # 6 voxels in slice 1
    data[4, :1, :1] = 1
    data[4, 5, 5] = 3
    layer.data = data
    qtbot.waitUntil(lambda: (widget.last_counts or {}).get("matrix") == (7, 2), timeout=5000)
    assert widget.last_counts["pore"] == (1, 1) and widget.last_counts["fibre"] == (0, 0)
    assert "matrix: 7 voxels in 2 slices" in widget.counts.value
    assert "pore: 1 voxel in 1 slice" in widget.counts.value
    assert "fibre: 0 voxels in 0 slices" in widget.counts.value


def test_autosave_and_restore(
    sample_viewer, widget, qtbot, wait_job, make_napari_viewer, small_phantom
):
    layer = widget.ensure_layer()
    widget.table.native.item(2, 1).setText("void")
    data = layer.data.copy()
    data[7, 3:6, 3:6] = 3
    layer.data = data
    qtbot.waitUntil(lambda: widget.last_saved is not None, timeout=10_000)
    wait_job(widget._saver)
    path = autosave_path(sample_viewer.layers["composite"])
    assert widget.last_saved == path and path.is_file()
    assert str(path) in widget.save_status.value
    # the same volume opened again: annotations and phase names come back
    other = make_napari_viewer()
    other.add_image(small_phantom[0], name="composite", scale=(1.3,) * 3)
    w2 = AnnotateWidget(other)
    qtbot.addWidget(w2.native)
    restored = w2.ensure_layer()
    np.testing.assert_array_equal(restored.data, data)
    assert restored.data.dtype == np.uint8
    assert w2.phases.names == ("matrix", "fibre", "void")


def test_hiding_the_dock_writes_a_pending_autosave(sample_viewer, widget, wait_job):
    layer = widget.ensure_layer()
    widget.native.show()
    layer.data_setitem((np.array([2]), np.array([2]), np.array([2])), np.array([1], np.uint8))
    assert widget._autosave_timer.isActive() and widget.last_saved is None
    widget.native.hide()
    assert wait_job(widget._saver) is JobState.DONE
    path = autosave_path(sample_viewer.layers["composite"])
    assert widget.last_saved == path
    assert tifffile.imread(path)[2, 2, 2] == 1


def test_autosave_never_replaces_a_foreign_file(sample_viewer, widget, wait_job, errors):
    path = autosave_path(sample_viewer.layers["composite"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"someone else's file")
    widget.ensure_layer()
    assert widget.save_now()
    assert wait_job(widget._saver) is JobState.FAILED
    assert path.read_bytes() == b"someone else's file"
    assert "not written by napari-tomoseg" in errors[-1]


def test_next_slice_to_correct(sample_viewer, widget, wait_job, errors):
    assert not widget.goto_next_slice()
    assert "segment it first" in errors[-1]
    unc = np.zeros((24, 64, 64), np.float16)
    unc[9] = 0.9
    unc[17] = 0.5
    scores = SliceScoreAccumulator(unc.shape)
    scores.add((slice(0, 24), slice(0, 64), slice(0, 64)), unc)
    state_for(sample_viewer).slice_scores = scores
    layer = widget.ensure_layer()
    assert widget.goto_next_slice()
    wait_job(widget.runner)
    assert sample_viewer.dims.current_step[0] == 9
    layer.data[9, 0, 0] = 1  # slice 9 annotated now: next is 17
    assert widget.goto_next_slice()
    wait_job(widget.runner)
    assert sample_viewer.dims.current_step[0] == 17
    assert "z=17" in widget.controls.status.value


def test_no_image_is_a_clear_error(make_napari_viewer, qtbot, errors):
    viewer = make_napari_viewer()
    w = AnnotateWidget(viewer)
    qtbot.addWidget(w.native)
    assert w.ensure_layer() is None
    assert "no image layer" in errors[-1]
    assert isinstance(w.phases, PhaseTable)
    # an image opened after docking is picked up
    viewer.add_image(np.zeros((4, 16, 16), np.uint8), name="scan")
    assert w.image.layer is viewer.layers["scan"]
    assert w.ensure_layer().data.shape == (4, 16, 16)


def test_number_keys_stay_napari_s_until_switched_on(sample_viewer, widget):
    from app_model.types import KeyBinding

    layer = widget.ensure_layer()
    digits = [KeyBinding.from_str(str(i)) for i in range(1, 10)]
    assert widget.keys.value is False
    assert not any(k in layer.keymap for k in digits)  # napari's tool keys (1 eraser, 2 brush...)
    assert "eraser" in widget.keys.tooltip and "1-9" in widget.keys.tooltip
    widget.keys.value = True
    assert all(k in layer.keymap for k in digits[:3]) and digits[3] not in layer.keymap  # 3 phases
    widget.add_phase.native.click()
    assert digits[3] in layer.keymap
    widget.keys.value = False
    assert not any(k in layer.keymap for k in digits)


def test_shortcuts_are_listed_in_the_widget(sample_viewer, widget):
    widget.native.show()
    assert not widget.shortcuts.native.isVisible()
    widget.help.native.click()
    assert widget.shortcuts.native.isVisible()
    for key in ("1-9", "Ctrl+Z", "P brush", "E eraser"):
        assert key in widget.shortcuts.value and key in widget.help.tooltip


def test_phase_table_headers_fit(sample_viewer, widget):
    widget.native.show()
    table = widget.table.native
    header = table.horizontalHeader()
    for col in range(table.columnCount()):
        text = table.horizontalHeaderItem(col).text()
        needed = header.fontMetrics().horizontalAdvance(text)
        assert header.sectionSize(col) >= needed, text
        assert table.horizontalHeaderItem(col).toolTip()
    assert "click" in table.horizontalHeaderItem(1).toolTip().lower()


def test_rarely_used_options_are_collapsed(sample_viewer, widget):
    widget.native.show()
    assert widget.advanced.expanded is False
    assert not widget.import_button.native.isVisible() and not widget.save_to.native.isVisible()
    assert widget.copy_prediction.native.isVisible() and widget.next_slice.native.isVisible()
    widget.advanced.expanded = True
    assert widget.import_button.native.isVisible()
