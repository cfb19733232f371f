"""The shared job runner and layer helpers the widgets are built on."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_tomoseg._napari._common import (
    JobControls,
    JobRunner,
    JobState,
    LayerCombo,
    apply_phases,
    check_image_layer,
    layer_phases,
    recent_models,
    remember_model,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES
from napari_tomoseg.core.progress import Cancelled


def _counting(n, *, fail_at=None, tick=0.0):
    def make(token):
        main = threading.main_thread()

        def gen():
            assert threading.current_thread() is not main, "core work must not run on the Qt thread"
            for i in range(n):
                if token.cancelled:
                    raise Cancelled("stopped")
                if i == fail_at:
                    raise ValueError("the volume is broken")
                time.sleep(tick)
                yield i
            return "finished"

        return gen()

    return make


def test_job_runs_in_worker_and_reports(qtbot, wait_job):
    runner = JobRunner("Counting")
    seen, results = [], []
    states = []
    runner.on_state(states.append)
    runner.start(
        _counting(5),
        on_yield=seen.append,
        on_return=results.append,
        total=5,
        describe=lambda i: (i + 1, f"{i + 1}/5"),
    )
    assert runner.state is JobState.RUNNING
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(_counting(1))
    assert wait_job(runner) is JobState.DONE
    assert seen == [0, 1, 2, 3, 4]
    assert results == ["finished"]
    assert states == [JobState.RUNNING, JobState.DONE]


def test_progress_of_more_than_two_billion_voxels(qtbot, wait_job):
    # a 2048^3 volume: 8.6e9 voxels, beyond the 32-bit ints of Qt's progress bars
    runner = JobRunner("Segmenting")
    total = 2048**3
    bars = []
    runner.start(
        _counting(4),
        total=total,
        describe=lambda i: (
            bars.append((runner._pbar.n, runner._pbar.total)) or (total * (i + 1) // 4, "")
        ),
    )
    assert wait_job(runner) is JobState.DONE
    n, top = bars[-1]  # as the last event arrived: 3 of 4 parts done
    assert 0 < top < 2**31 and n == pytest.approx(3 * top / 4, rel=1e-6)


def test_stop_cancels_the_core_operation(qtbot, wait_job):
    runner = JobRunner("Counting")
    controls = JobControls(runner)
    qtbot.addWidget(controls)
    stopped, results = [], []
    runner.start(
        _counting(10_000, tick=0.005),
        on_return=results.append,
        on_stopped=lambda: stopped.append(True),
    )
    assert not controls.run_button.isEnabled() and controls.stop_button.isEnabled()
    controls.stop_button.click()
    assert wait_job(runner) is JobState.STOPPED
    assert stopped == [True] and results == []
    assert controls.run_button.isEnabled() and not controls.stop_button.isEnabled()


def test_result_after_cancel_counts_as_stopped(qtbot, wait_job):
    # fine-tuning returns its best weights when stopped: the result handler runs, state STOPPED
    runner = JobRunner("Training")
    results = []

    def make(token):
        def gen():
            while not token.cancelled:
                time.sleep(0.005)
                yield 0
            return "best weights"

        return gen()

    runner.start(make, on_return=results.append)
    qtbot.wait(30)
    runner.stop()
    assert wait_job(runner) is JobState.STOPPED
    assert results == ["best weights"]


def test_failure_notifies_and_calls_on_error(qtbot, wait_job, monkeypatch):
    import napari_tomoseg._napari._common as common

    shown = []
    monkeypatch.setattr(common, "show_error", shown.append)
    runner = JobRunner("Segmenting")
    errors = []
    runner.start(_counting(5, fail_at=2), on_error=errors.append)
    assert wait_job(runner) is JobState.FAILED
    assert isinstance(errors[0], ValueError)
    assert shown == ["Segmenting failed: the volume is broken"]


def test_layer_combo_follows_the_viewer(make_napari_viewer, small_phantom):
    viewer = make_napari_viewer()
    combo = LayerCombo(viewer, "image", accept=lambda ly: ly.ndim == 3)
    assert combo.layer() is None and combo.count() == 0
    volume, labels = small_phantom
    viewer.add_image(volume, name="ct")
    viewer.add_image(volume[0], name="flat")  # 2D: filtered out
    viewer.add_labels(labels, name="lab")
    assert [combo.itemText(i) for i in range(combo.count())] == ["ct"]
    assert combo.layer() is viewer.layers["ct"]
    viewer.layers["ct"].name = "scan"
    assert combo.currentText() == "scan"
    del viewer.layers["scan"]
    assert combo.count() == 0
    optional = LayerCombo(viewer, "labels", optional=True)
    assert [optional.itemText(i) for i in range(optional.count())] == ["(none)", "lab"]
    assert optional.layer() is None


def test_check_image_layer_refuses_bad_input(make_napari_viewer, small_phantom):
    viewer = make_napari_viewer()
    volume, _ = small_phantom
    with pytest.raises(ValueError, match="no image layer"):
        check_image_layer(None)
    flat = viewer.add_image(volume[0], name="flat")
    with pytest.raises(ValueError, match="3D volume"):
        check_image_layer(flat)
    rgb = viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True, name="photo")
    with pytest.raises(ValueError, match="RGB"):
        check_image_layer(rgb)
    ok = viewer.add_image(volume, name="ct")
    assert check_image_layer(ok).shape == volume.shape


def test_apply_phases_names_and_colours(make_napari_viewer, small_phantom):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(small_phantom[1])
    apply_phases(layer, COMPOSITE_PHASES)
    assert list(layer.features["phase"]) == ["none", "matrix", "fibre", "pore"]
    np.testing.assert_allclose(
        layer.colormap.map(np.array([2]))[0][:3], [0xE6 / 255, 0x9F / 255, 0]
    )
    assert layer.colormap.map(np.array([0]))[0][3] == 0  # not annotated: transparent
    assert layer_phases(layer) == COMPOSITE_PHASES


def test_recent_models_round_trip(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    remember_model(a)
    remember_model(b)
    remember_model(a)
    assert recent_models() == [a.resolve(), b.resolve()]
    b.unlink()
    assert recent_models() == [a.resolve()]
