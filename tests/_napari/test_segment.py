"""The Segment widget in a real viewer: prediction layer contents, preview, mask, stop, failures."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.models import ModelChooser
from napari_tomoseg._napari.segment import PREDICTION, UNCERTAINTY, SegmentWidget
from napari_tomoseg._napari.state import state_for
from napari_tomoseg.core.measure.uncertainty import slice_scores


@pytest.fixture
def widget(sample_viewer, qtbot):
    w = SegmentWidget(sample_viewer)
    qtbot.addWidget(w.native)
    return w


def _core_labels(volume, **kwargs):
    from napari_tomoseg.core.model import bundled_model_path, load_model
    from napari_tomoseg.core.segment import InferenceConfig, segment_volume

    return segment_volume(
        volume, load_model(bundled_model_path()), InferenceConfig(**kwargs)
    ).labels


def test_segment_fills_prediction_like_the_core(sample_viewer, widget, wait_job, small_phantom):
    viewer = sample_viewer
    volume, truth = small_phantom
    annotations = viewer.add_labels(np.zeros(volume.shape, np.uint8), name="annotations")
    annotations.data[3, 10:20, 10:20] = 2
    before = annotations.data.copy()
    slabs = []
    # the bundled model's defaults; only the modes a one-slice 2D network can run are offered
    assert widget.tile.value == 512 and widget.mode.value == "2d"
    assert widget.mode.current_choice == "2D along an axis"
    assert widget.mode.choices == ("2d", "2d-3axes")
    assert widget.mask.layer is None  # neither ground truth nor annotations is taken for a mask
    assert widget.run()
    widget.runner.worker.yielded.connect(lambda ev: slabs.append(ev.region))
    assert not widget.controls.run_button.enabled and not widget.preview.enabled
    assert wait_job(widget.runner) is JobState.DONE
    pred = viewer.layers[PREDICTION]
    expected = _core_labels(volume, tile=512, overlap=32, device="cpu")
    np.testing.assert_array_equal(pred.data, expected)
    assert len(slabs) >= 2  # it arrived slab by slab
    assert pred.scale.tolist() == pytest.approx([1.3, 1.3, 1.3])
    assert list(pred.features["phase"]) == ["none", "matrix", "fibre", "pore"]
    # the bundled model knows this material: most voxels right
    assert (pred.data == truth).mean() > 0.9
    np.testing.assert_array_equal(annotations.data, before)  # annotations never touched
    unc = viewer.layers[UNCERTAINTY].data
    assert unc.shape == volume.shape and 0 <= unc.min() and unc.max() <= 1 and unc.max() > 0
    state = state_for(viewer)
    assert state.uncertainty is unc and state.uncertainty_image == "composite"
    # the per-slice scores gathered while segmenting are those of the map shown
    np.testing.assert_allclose(
        state.slice_scores.scores(0), slice_scores(unc, axis=0), rtol=1e-3, atol=1e-4
    )
    assert "Segmented 24×64×64" in widget.controls.status.value
    assert widget.controls.run_button.enabled

    # re-running replaces the prediction in the same layer
    first = pred
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    assert [ly.name for ly in viewer.layers].count(PREDICTION) == 1
    assert viewer.layers[PREDICTION] is first


def test_stop_keeps_the_previous_prediction(sample_viewer, widget, wait_job):
    old = sample_viewer.add_labels(np.full((24, 64, 64), 3, np.uint8), name=PREDICTION)
    assert widget.run()
    widget.controls.stop_button.native.click()
    assert wait_job(widget.runner) is JobState.STOPPED
    assert sample_viewer.layers[PREDICTION] is old
    assert (old.data == 3).all()


def test_failure_notifies_and_restores(sample_viewer, widget, wait_job, errors, monkeypatch):
    sample_viewer.add_labels(np.full((24, 64, 64), 3, np.uint8), name=PREDICTION)

    def broken():
        raise RuntimeError("CUDA out of memory")

    # on the class: deleting an attribute of a magicgui container removes a child widget
    monkeypatch.setattr(ModelChooser, "loader", lambda self: broken)
    assert widget.run()
    assert wait_job(widget.runner) is JobState.FAILED
    assert errors == ["Segmenting failed: RuntimeError: CUDA out of memory"]
    assert (sample_viewer.layers[PREDICTION].data == 3).all()
    assert widget.controls.run_button.enabled


def test_bad_input_is_refused_with_a_message(make_napari_viewer, qtbot, errors, small_phantom):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    qtbot.addWidget(w.native)
    assert not w.run()
    assert "no image layer" in errors[-1]
    viewer.add_image(small_phantom[0], name="ct")
    viewer.add_labels(np.ones((5, 5, 5), np.uint8), name="small mask")
    assert w.mask.layer is None  # a mask only when chosen
    w.mask.select("small mask")
    assert not w.run()
    assert "mask 'small mask' has shape (5, 5, 5)" in errors[-1]
    w.mask.select(None)
    w.tile.value = 100
    assert not w.run()
    assert "multiple of 8" in errors[-1]
    assert PREDICTION not in viewer.layers


def test_preview_segments_the_current_slice(sample_viewer, widget, wait_job, small_phantom):
    sample_viewer.dims.set_current_step(0, 7)
    assert widget.run_preview()
    assert wait_job(widget.runner) is JobState.DONE
    pred = sample_viewer.layers[PREDICTION].data
    expected = _core_labels(small_phantom[0], tile=512, overlap=32, device="cpu")
    np.testing.assert_array_equal(pred[7], expected[7])
    assert not pred[:7].any() and not pred[8:].any()
    assert (
        "slice z=7" in widget.estimate.value
        and "whole volume will take about" in widget.estimate.value
    )
    # "Remove ring artifacts" follows the model (on for the bundled one); off, the raw slice is used
    assert widget.ring_removal.value and widget.settings()["ring_removal"]
    widget.ring_removal.value = False
    assert widget.run_preview()
    assert wait_job(widget.runner) is JobState.DONE
    raw = _core_labels(small_phantom[0], tile=512, overlap=32, device="cpu", ring_removal=False)
    np.testing.assert_array_equal(sample_viewer.layers[PREDICTION].data[7], raw[7])
    assert (raw[7] != expected[7]).any()  # the phantom's rings change the labels


def test_field_of_view_mask(make_napari_viewer, qtbot, wait_job, small_phantom):
    viewer = make_napari_viewer()
    volume = small_phantom[0].copy()
    rr, cc = np.ogrid[:64, :64]
    outside = (rr - 32) ** 2 + (cc - 32) ** 2 > 28**2
    volume[:, outside] = 0
    viewer.add_image(volume, name="ct")
    w = SegmentWidget(viewer)
    qtbot.addWidget(w.native)
    assert w.run_detect_fov()
    assert wait_job(w.runner) is JobState.DONE
    assert w.mask.layer is viewer.layers["field of view"]
    fov = viewer.layers["field of view"].data
    assert not fov[:, outside].any() and fov[:, 32, 32].all()
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    pred = viewer.layers[PREDICTION].data
    assert not pred[:, outside].any()  # outside the circle: 0, not segmented
    assert (pred[fov.astype(bool)] > 0).all()


def test_tta_checkbox_follows_the_model_and_reaches_the_core(
    sample_viewer, widget, wait_job, small_phantom, tmp_path
):
    from dataclasses import replace

    from napari_tomoseg._napari.models import BUNDLED
    from napari_tomoseg.core.model import bundled_model_path, load_model, save_model

    volume, _ = small_phantom
    assert not widget.tta.value  # the bundled model does not ask for it
    assert widget.tta in list(widget.advanced.body) and not widget.advanced.expanded
    model = load_model(bundled_model_path())
    model.defaults = replace(model.defaults, tta=True)
    widget.model.set_file(save_model(tmp_path / "tta.safetensors", model))
    assert widget.tta.value  # read from the file's header
    widget.model.combo.value = BUNDLED
    assert not widget.tta.value
    state_for(sample_viewer).add_model("with tta", model)
    widget.model.select_memory("with tta")
    assert widget.tta.value
    assert widget.run()
    assert wait_job(widget.runner) is JobState.DONE
    pred = sample_viewer.layers[PREDICTION]
    expected = _core_labels(volume, tile=512, overlap=32, device="cpu", tta=True)
    np.testing.assert_array_equal(pred.data, expected)
    assert (expected != _core_labels(volume, tile=512, overlap=32, device="cpu")).any()
    assert pred.metadata["tomoseg_settings"]["tta"] is True
