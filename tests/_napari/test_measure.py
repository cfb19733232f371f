"""The Measure widget in a real viewer: the sample composite's ground truth measured and saved as CSV,
layer pickers, voxel size, Stop, the objects layer, copy, plots in napari's theme, bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from qtpy.QtWidgets import QApplication

from napari_tomoseg import __version__
from napari_tomoseg._napari import measure as measure_module
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.layers import apply_phases
from napari_tomoseg._napari.measure import MeasureWidget
from napari_tomoseg._napari.measure_plots import theme_colours
from napari_tomoseg.core.phases import COMPOSITE_PHASES

from .conftest import VOXEL_UM


@pytest.fixture
def widget(sample_viewer, qtbot):
    w = MeasureWidget(sample_viewer)
    qtbot.addWidget(w.native)
    return w


def _csv_rows(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    header = [line for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    return header, rows


def test_measures_the_ground_truth_and_saves_csv(
    sample_viewer, small_phantom, widget, wait_job, tmp_path, monkeypatch
):
    _, truth = small_phantom
    assert widget.labels_layer.layer is sample_viewer.layers["ground truth"]
    assert widget.voxel_size.value == f"{VOXEL_UM:g}"  # from the layer's scale
    assert list(widget.phases_select.value) == list(COMPOSITE_PHASES.names)
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    m = widget.result
    counts = np.bincount(truth.ravel(), minlength=4)
    assert m.fractions.counts.tolist() == counts.tolist()
    assert m.fractions.fractions.tolist() == (counts[1:] / counts[1:].sum()).tolist()
    assert m.units.voxel_size == (VOXEL_UM,) * 3
    assert set(m.objects) == set(m.thickness) == set(COMPOSITE_PHASES.names)
    assert list(m.orientation) == ["fibre"]
    assert m.orientation["fibre"].source == "image"  # the composite image was picked
    # the table shows one row per phase with its fraction
    table = widget.table.data.to_list()
    assert [row[0] for row in table] == list(COMPOSITE_PHASES.names)
    assert "µm" in " ".join(widget.table.column_headers)

    monkeypatch.setattr(measure_module, "choose_folder", lambda *a, **k: tmp_path)
    written = widget.save_csv()
    assert sorted(p.name for p in written) == sorted(
        f"ground_truth_{n}.csv"
        for n in ("fractions", "profile", "objects", "thickness", "orientation", "surface")
    )
    header, rows = _csv_rows(tmp_path / "ground_truth_fractions.csv")
    assert header[0] == f"# napari-tomoseg {__version__}: fractions"
    assert any("ground truth" in line and "24 x 64 x 64" in line for line in header)
    assert any("1 = matrix, 2 = fibre, 3 = pore" in line for line in header)
    assert any("µm³" in line for line in header)
    assert [r["phase"] for r in rows] == list(COMPOSITE_PHASES.names)
    assert [int(r["voxels"]) for r in rows] == counts[1:].tolist()
    assert [float(r["fraction"]) for r in rows] == (counts[1:] / counts[1:].sum()).tolist()
    _, profile = _csv_rows(tmp_path / "ground_truth_profile.csv")
    assert len(profile) == truth.shape[0]
    assert float(profile[5]["position z (µm)"]) == pytest.approx(5.5 * VOXEL_UM)

    # the same files again: asked before replacing, and kept when the answer is no
    asked = []
    monkeypatch.setattr(
        measure_module, "confirm_overwrite", lambda parent, paths: asked.append(paths) or False
    )
    before = (tmp_path / "ground_truth_fractions.csv").stat().st_mtime_ns
    assert widget.save_csv() == []
    assert len(asked[0]) == 6
    assert (tmp_path / "ground_truth_fractions.csv").stat().st_mtime_ns == before


def test_picker_prefers_the_prediction_and_skips_shown_only_layers(
    sample_viewer, small_phantom, widget
):
    _, truth = small_phantom
    sample_viewer.add_labels(np.zeros_like(truth), name="errors")
    assert widget.labels_layer.layer is sample_viewer.layers["ground truth"]
    assert "errors" not in [ly.name for ly in widget.labels_layer.layers()]
    pred = sample_viewer.add_labels(truth.copy(), name="prediction", scale=(2.0, 1.0, 1.0))
    apply_phases(pred, COMPOSITE_PHASES)
    assert widget.labels_layer.layer is pred
    assert widget.voxel_size.value == "2,1,1"  # followed the new layer's scale


def test_stop(sample_viewer, widget, wait_job):
    big = np.ones((64, 128, 128), np.uint8)
    big[:, 40:80, 40:80] = 2
    layer = sample_viewer.add_labels(big, name="prediction")
    apply_phases(layer, COMPOSITE_PHASES)
    widget.image_layer.value = None
    assert widget.run()
    assert widget.controls.stop_button.enabled and not widget.controls.run_button.enabled
    widget.controls.stop_button.native.click()
    assert wait_job(widget.runner) is JobState.STOPPED
    assert widget.result is None and widget.controls.status.value == "Measuring stopped."
    assert widget.controls.run_button.enabled


def test_without_voxel_size_lengths_are_in_voxels(sample_viewer, widget, wait_job):
    widget.voxel_size.value = ""
    for name, check in widget.checks.items():
        check.value = name in ("fractions", "objects")
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    m = widget.result
    assert m.units.voxel_size is None and m.objects and not m.thickness
    assert "lengths in voxels" in widget.summary.value
    assert "voxel³" in " ".join(widget.table.column_headers)


def test_objects_layer_and_copy(sample_viewer, small_phantom, widget, wait_job):
    _, truth = small_phantom
    widget.objects_phase.value = "pore"
    assert widget.add_objects_layer()
    assert wait_job(widget.runner) is JobState.DONE
    layer = sample_viewer.layers["objects of pore"]
    assert ((np.asarray(layer.data) > 0) == (truth == 3)).all()
    assert tuple(layer.scale) == (VOXEL_UM,) * 3
    assert len(layer.features) == int(np.asarray(layer.data).max()) + 1
    assert "objects of pore" not in [ly.name for ly in widget.labels_layer.layers()]

    for name, check in widget.checks.items():
        check.value = name == "fractions"
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    widget.copy_summary()
    text = QApplication.clipboard().text()
    lines = text.strip().splitlines()
    assert lines[0].split("\t")[:2] == ["phase", "fraction"]
    counts = np.bincount(truth.ravel(), minlength=4)
    assert float(lines[2].split("\t")[1]) == counts[2] / counts[1:].sum()  # unrounded


def test_plots_follow_the_theme(sample_viewer, widget, wait_job):
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    figures = widget.plots.figures
    assert [len(figures[n].axes) for n in ("profile", "sizes", "orientation")] == [1, 1, 1]
    profile_lines = figures["profile"].axes[0].get_lines()
    assert [ln.get_label() for ln in profile_lines] == list(COMPOSITE_PHASES.names)
    assert np.trace(np.array(widget.result.orientation["fibre"].tensor)) == pytest.approx(1)
    shown = widget.plots.tensor_table.data.to_list()
    tensor = widget.result.orientation["fibre"].tensor
    assert shown == [[f"{v:.4f}" for v in row] for row in tensor]

    from matplotlib.colors import to_hex

    sample_viewer.theme = "light"
    light = theme_colours(sample_viewer)
    assert to_hex(figures["profile"].get_facecolor()) == light["background"]
    sample_viewer.theme = "dark"
    assert to_hex(figures["profile"].get_facecolor()) == theme_colours(sample_viewer)["background"]
    assert theme_colours(sample_viewer)["background"] != light["background"]


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda w: setattr(w.voxel_size, "value", "-1"), "must be positive"),
        (lambda w: setattr(w.voxel_size, "value", "abc"), "cannot read the voxel size"),
        (lambda w: [setattr(c, "value", False) for c in w.checks.values()], "tick at least one"),
        (lambda w: setattr(w.phases_select, "value", []), "at least one phase"),
    ],
)
def test_bad_form_is_refused_with_a_notification(widget, errors, setup, match):
    setup(widget)
    assert not widget.run()
    assert widget.runner.worker is None
    assert errors and match in errors[-1]


def test_image_of_another_shape_is_refused(sample_viewer, widget, errors):
    sample_viewer.add_image(np.zeros((5, 6, 7), np.float32), name="other")
    widget.image_layer.value = sample_viewer.layers["other"]
    assert not widget.run()
    assert "does not match the labels" in errors[-1]


def test_ids_outside_the_phase_table_fail_with_a_notification(
    sample_viewer, small_phantom, widget, wait_job, errors
):
    _, truth = small_phantom
    bad = truth.copy()
    bad[0, 0, 0] = 9
    layer = sample_viewer.add_labels(bad, name="prediction")
    apply_phases(layer, COMPOSITE_PHASES)
    assert widget.run()
    assert wait_job(widget.runner) is JobState.FAILED
    assert "ids" in errors[-1] and widget.result is None


def test_zarr_backed_labels_stream_and_skip_in_memory_measures(
    sample_viewer, small_phantom, widget, wait_job, tmp_path, monkeypatch
):
    import zarr

    from napari_tomoseg.core.measure import objects

    _, truth = small_phantom
    store = zarr.create_array(
        tmp_path / "labels.zarr", shape=truth.shape, chunks=(4, 64, 64), dtype="u1"
    )
    store[:] = truth
    # a budget this volume is over: objects and local thickness would hold it in memory
    monkeypatch.setattr(objects, "DEFAULT_MAX_MEMORY", truth.size)
    layer = sample_viewer.add_labels(store, name="prediction")
    apply_phases(layer, COMPOSITE_PHASES)
    assert widget.labels_layer.layer is layer
    assert not widget.checks["objects"].value and not widget.checks["thickness"].value
    assert "budget" in widget.checks["objects"].tooltip
    assert widget.what() == ("fractions", "profile", "orientation", "surface")
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    counts = np.bincount(truth.ravel(), minlength=4)
    assert widget.result.fractions.counts.tolist() == counts.tolist()
    assert widget.result.objects == {} and widget.result.surfaces is not None
    # a layer within the budget: the in-memory measures are ticked again
    monkeypatch.undo()
    widget.labels_layer.select("ground truth")
    assert widget.checks["objects"].value and widget.checks["thickness"].value
    # and a layer within the budget keeps what the user unticked
    widget.checks["thickness"].value = False
    widget.labels_layer.select(layer)
    widget.labels_layer.select("ground truth")
    assert widget.checks["objects"].value and not widget.checks["thickness"].value


def test_phase_lists_survive_napari_resetting_choices(sample_viewer, widget) -> None:
    widget.phases_select.value = ["fibre", "pore"]
    widget.objects_phase.value = "fibre"
    # napari docks the widget through the plugin menu and calls reset_choices on layer changes
    sample_viewer.add_labels(np.zeros((4, 8, 8), np.uint8), name="scribbles")
    widget.reset_choices()
    assert tuple(widget.phases_select.value) == ("fibre", "pore")
    assert widget.objects_phase.value == "fibre"
