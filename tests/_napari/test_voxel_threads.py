"""Voxel size and CPU threads in the widgets: the Segment widget shows the image's voxel size, a
corrected one reaches the prediction layer (scale and metadata) and Export writes it; the threads
field reaches the jobs, which set it in their worker thread."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from napari_tomoseg._napari.export import ExportWidget
from napari_tomoseg._napari.finetune import FinetuneWidget
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.layers import apply_phases
from napari_tomoseg._napari.segment import PREDICTION, SegmentWidget
from napari_tomoseg.core import io
from napari_tomoseg.core import threads as threads_mod
from napari_tomoseg.core.phases import COMPOSITE_PHASES

NM = (0.0005, 0.00065, 0.00065)  # 0.5, 0.65, 0.65 nm in µm


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int | None, bool]]:
    """Every configure_threads call: (threads asked for, made on the main thread?)."""
    calls: list[tuple[int | None, bool]] = []
    real = threads_mod.configure_threads

    def spy(threads: int | None = None) -> int:
        calls.append((threads, threading.current_thread() is threading.main_thread()))
        return real(threads)

    monkeypatch.setattr(threads_mod, "configure_threads", spy)
    return calls


def _segment_widget(viewer, qtbot) -> SegmentWidget:
    w = SegmentWidget(viewer)
    qtbot.addWidget(w.native)
    w.tile.value = 64
    w.overlap.value = 8
    w.keep_uncertainty.value = False
    return w


def test_segment_voxel_size_reaches_the_prediction_and_export_writes_it(
    sample_viewer, qtbot, wait_job, tmp_path, thread_calls
):
    w = _segment_widget(sample_viewer, qtbot)
    assert w.voxel_size.value == "1.3 µm"  # the image's, as read
    w.voxel_size.value = "0.5,0.65,0.65 nm"
    w.threads.value = 1
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    pred = sample_viewer.layers[PREDICTION]
    assert tuple(pred.scale) == pytest.approx(NM)
    assert pred.metadata["tomoseg_voxel_size_um"] == pytest.approx(list(NM))
    # the image and the layer drawn over it stay aligned with the prediction
    assert tuple(sample_viewer.layers["composite"].scale) == pytest.approx(NM)
    assert tuple(sample_viewer.layers["ground truth"].scale) == pytest.approx(NM)
    assert w.voxel_size.value == "0.0005, 0.00065, 0.00065 µm"
    assert thread_calls == [(1, False)]  # asked for once, in the worker thread

    export = ExportWidget(sample_viewer)
    qtbot.addWidget(export.native)
    assert export.labels_layer.layer is pred
    assert export.voxel_size.value == "0.0005, 0.00065, 0.00065 µm"
    export.path.value = str(tmp_path / "pred.tif")
    assert export.export()
    assert wait_job(export.runner) is JobState.DONE
    assert io.read_voxel_size(tmp_path / "pred.tif") == pytest.approx(NM)
    report = json.loads((tmp_path / "pred-report.json").read_text())
    assert report["voxel_size_um"] == pytest.approx(list(NM))


def test_segment_with_automatic_threads_asks_for_the_default(
    sample_viewer, qtbot, wait_job, thread_calls
):
    w = _segment_widget(sample_viewer, qtbot)
    assert w.threads.value == 0 and w.threads.native.specialValueText() == "auto"
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    assert thread_calls == [(None, False)]
    # an unchanged voxel size leaves the layers as they were
    assert tuple(sample_viewer.layers["composite"].scale) == pytest.approx((1.3,) * 3)
    assert tuple(sample_viewer.layers[PREDICTION].scale) == pytest.approx((1.3,) * 3)


def test_export_writes_a_voxel_size_typed_there(
    sample_viewer, small_phantom, qtbot, wait_job, tmp_path
):
    _, truth = small_phantom
    layer = sample_viewer.add_labels(truth, name=PREDICTION)  # no voxel size
    apply_phases(layer, COMPOSITE_PHASES)
    export = ExportWidget(sample_viewer)
    qtbot.addWidget(export.native)
    assert export.labels_layer.layer is layer and export.voxel_size.value == ""
    export.voxel_size.value = "2 um"
    export.path.value = str(tmp_path / "p.tif")
    assert export.export()
    assert wait_job(export.runner) is JobState.DONE
    assert io.read_voxel_size(tmp_path / "p.tif") == pytest.approx((2.0, 2.0, 2.0))
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)  # the layer itself is left alone


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("abc", "voxel size: cannot read the voxel size 'abc'"),
        ("0", "voxel size: voxel size '0' must be positive and finite"),
        ("-1.3", "voxel size: voxel size '-1.3' must be positive and finite"),
    ],
)
def test_a_bad_voxel_size_is_one_line_and_changes_nothing(
    sample_viewer, small_phantom, qtbot, errors, tmp_path, text, match
):
    w = _segment_widget(sample_viewer, qtbot)
    w.voxel_size.value = text
    assert not w.run()
    assert not w.run_preview()
    assert len(errors) == 2 and all("\n" not in e and match in e for e in errors)
    assert errors[0].startswith("Cannot segment: ")
    assert PREDICTION not in sample_viewer.layers
    assert tuple(sample_viewer.layers["composite"].scale) == pytest.approx((1.3,) * 3)

    _, truth = small_phantom
    sample_viewer.add_labels(truth, name=PREDICTION)
    export = ExportWidget(sample_viewer)
    qtbot.addWidget(export.native)
    export.voxel_size.value = text
    export.path.value = str(tmp_path / "p.tif")
    assert not export.export()
    assert export.status.value.startswith("Export failed: ") and match in export.status.value
    assert list(tmp_path.iterdir()) == []


def test_finetune_passes_its_threads_to_the_training_job(
    sample_viewer, small_phantom, qtbot, wait_job, thread_calls
):
    _, truth = small_phantom
    ann = np.zeros_like(truth)
    for z in (4, 12, 19):
        ann[z] = truth[z]
    layer = sample_viewer.add_labels(ann, name="annotations", scale=(1.3,) * 3)
    apply_phases(layer, COMPOSITE_PHASES)
    w = FinetuneWidget(sample_viewer)
    qtbot.addWidget(w.native)
    w.budget_kind.value = "steps"
    w.budget.value = 2
    assert w.threads.native.specialValueText() == "auto"
    w.threads.value = 1
    assert w.run()
    qtbot.waitUntil(
        lambda: w.result is not None or w.runner.state is JobState.FAILED, timeout=120_000
    )
    assert wait_job(w.runner) is JobState.DONE
    assert thread_calls == [(1, False)]
