"""A volume too big for memory, in a real viewer: opened lazily, segmented into a zarr-backed
prediction layer, annotated into a zarr store that is written as it is painted and restored.

The in-memory limit is lowered to 1000 voxels so that the small phantom takes the big-volume path
(the same code that serves a 2048^3 volume; ``benchmarks/gui_scale.py`` runs that one).
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_tomoseg._napari.annotate import ANNOTATIONS, AnnotateWidget
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.segment import PREDICTION, UNCERTAINTY, SegmentWidget
from napari_tomoseg._napari.state import state_for
from napari_tomoseg.core import io
from napari_tomoseg.core.io.labelstore import summarize_labels
from napari_tomoseg.core.measure.uncertainty import rank_scores, slice_scores

VOXEL = (1.3, 1.3, 1.3)


@pytest.fixture
def big(monkeypatch, tmp_path, small_phantom, make_napari_viewer):
    """(viewer, path, volume): the phantom saved as zarr, opened through the plugin's reader."""
    monkeypatch.setenv("NAPARI_TOMOSEG_IN_MEMORY_LIMIT", "1000")
    volume, _ = small_phantom
    path = io.write_volume(tmp_path / "scan.zarr", volume, voxel_size=VOXEL)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-tomoseg")
    assert isinstance(layer.data, da.Array)  # lazy: nothing read until shown
    return viewer, path, volume


def _core_labels(volume):
    from napari_tomoseg.core.model import bundled_model_path, load_model
    from napari_tomoseg.core.segment import InferenceConfig, segment_volume

    model = load_model(bundled_model_path())
    return segment_volume(volume, model, InferenceConfig(tile=512, overlap=32, device="cpu")).labels


def _segmented(viewer, qtbot, wait_job):
    """A Segment widget that has segmented the viewer's volume once, successfully."""
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    return widget


def _hidden(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_segment_writes_a_zarr_backed_prediction(big, qtbot, wait_job, tmp_path):
    viewer, _path, volume = big
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    grown = []
    assert widget.run()
    widget.runner.worker.yielded.connect(
        lambda ev: grown.append(PREDICTION in viewer.layers and viewer.layers[PREDICTION].data)
    )
    assert wait_job(widget.runner) is JobState.DONE
    pred = viewer.layers[PREDICTION]
    store = tmp_path / "scan.zarr.tomoseg-prediction.zarr"
    assert isinstance(pred.data, zarr.Array) and pred.metadata["tomoseg_store"] == str(store)
    # what the layer shows is what is on disk, and what the core computes in memory
    np.testing.assert_array_equal(np.asarray(pred.data), _core_labels(volume))
    np.testing.assert_array_equal(io.read_labels(store), np.asarray(pred.data))
    assert io.read_label_phases(store).names == ("matrix", "fibre", "pore")
    assert io.read_voxel_size(store) == pytest.approx(VOXEL)
    assert any(isinstance(g, zarr.Array) for g in grown)  # the layer showed the store as it filled
    unc = viewer.layers[UNCERTAINTY].data
    assert isinstance(unc, zarr.Array) and unc.dtype == np.uint8
    u = np.asarray(unc)
    assert u.max() > 0 and viewer.layers[UNCERTAINTY].contrast_limits == [0.0, 255.0]
    np.testing.assert_allclose(
        state_for(viewer).slice_scores.scores(0), slice_scores(u / 255.0, axis=0), atol=2.5e-3
    )
    assert _hidden(tmp_path) == []  # no temporary store left behind

    # again: the store is replaced, the layer kept
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    assert (
        viewer.layers[PREDICTION] is pred
        and [ly.name for ly in viewer.layers].count(PREDICTION) == 1
    )
    assert _hidden(tmp_path) == []


def test_stop_deletes_the_partial_store_and_keeps_the_previous_one(big, qtbot, wait_job, tmp_path):
    viewer, _path, _volume = big
    widget = _segmented(viewer, qtbot, wait_job)
    before = np.asarray(viewer.layers[PREDICTION].data).copy()
    assert widget.run()
    widget.controls.stop_button.native.click()
    assert wait_job(widget.runner) is JobState.STOPPED
    np.testing.assert_array_equal(np.asarray(viewer.layers[PREDICTION].data), before)
    np.testing.assert_array_equal(
        io.read_labels(tmp_path / "scan.zarr.tomoseg-prediction.zarr"), before
    )
    assert _hidden(tmp_path) == []


def test_segment_refuses_to_replace_a_foreign_folder(big, qtbot, errors, tmp_path):
    viewer, _path, _volume = big
    foreign = tmp_path / "scan.zarr.tomoseg-prediction.zarr"
    zarr.create_array(store=str(foreign), shape=(2, 2, 2), dtype=np.uint8)
    widget = SegmentWidget(viewer)
    qtbot.addWidget(widget.native)
    assert not widget.run()
    assert "was not written by napari-tomoseg" in errors[-1]
    assert zarr.open_array(str(foreign)).shape == (2, 2, 2)


def test_annotations_of_a_big_volume_live_in_a_store(
    big, qtbot, wait_job, tmp_path, make_napari_viewer
):
    viewer, path, _volume = big
    _segmented(viewer, qtbot, wait_job)
    ann = AnnotateWidget(viewer)
    qtbot.addWidget(ann.native)
    layer = ann.ensure_layer()
    store = tmp_path / "scan.zarr.tomoseg-annotations.zarr"
    assert isinstance(layer.data, zarr.Array) and store.is_dir()

    # paint with napari's own brush: written straight to disk
    ann.select_phase(2)
    viewer.dims.set_current_step(0, 4)
    layer.brush_size = 3
    layer.paint((4, 10, 10), 2)
    on_disk = zarr.open_array(str(store))
    assert on_disk[4, 10, 10] == 2 and on_disk[5, 10, 10] == 0
    # copy the prediction of slice 7 into it
    viewer.dims.set_current_step(0, 7)
    n = ann.copy_prediction_slice()
    pred7 = np.asarray(viewer.layers[PREDICTION].data[7])
    assert n == int((pred7 > 0).sum()) > 0
    np.testing.assert_array_equal(np.asarray(zarr.open_array(str(store))[7]), pred7)

    # counts from the stored chunks
    ann.last_counts = None
    ann.update_counts()
    qtbot.waitUntil(lambda: getattr(ann, "last_counts", None) is not None, timeout=10_000)
    summary = summarize_labels(np.asarray(layer.data), n_ids=3)
    assert ann.last_counts["fibre"][0] == summary.voxels[2]
    assert ann.last_counts["fibre"][1] == 2  # slices 4 and 7

    # next slice to correct: the most uncertain slice that holds no annotation
    assert ann.goto_next_slice()
    wait_job(ann.runner)
    expected = rank_scores(state_for(viewer).slice_scores.scores(0), n=1, skip=[4, 7])[0].index
    assert viewer.dims.current_step[0] == expected

    # a new viewer on the same volume restores the annotations from the store
    assert ann.save_now()
    painted = np.asarray(layer.data).copy()
    viewer2 = make_napari_viewer()
    viewer2.open(str(path), plugin="napari-tomoseg")
    ann2 = AnnotateWidget(viewer2)
    qtbot.addWidget(ann2.native)
    layer2 = ann2.ensure_layer()
    assert isinstance(layer2.data, zarr.Array)
    np.testing.assert_array_equal(np.asarray(layer2.data), painted)
    assert ANNOTATIONS in viewer2.layers


def test_reader_opens_the_stores_lazily(big, qtbot, wait_job, tmp_path):
    from napari_tomoseg._napari.reader import read_path

    viewer, _path, _volume = big
    _segmented(viewer, qtbot, wait_job)
    [(data, meta, kind)] = read_path(str(tmp_path / "scan.zarr.tomoseg-prediction.zarr"))
    assert kind == "labels" and isinstance(data, zarr.Array)
    assert list(meta["features"]["phase"]) == ["none", "matrix", "fibre", "pore"]
