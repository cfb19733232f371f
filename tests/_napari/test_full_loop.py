"""The whole loop on the synthetic sample, driven through the widgets of a real viewer:
open sample -> segment -> copy the prediction into annotations on two slices and correct a region
-> fine-tune a few steps -> segment again -> evaluate on the held-out slice -> export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_tomoseg._napari.annotate import AnnotateWidget
from napari_tomoseg._napari.evaluate import EvaluateWidget
from napari_tomoseg._napari.export import ExportWidget
from napari_tomoseg._napari.finetune import FinetuneWidget
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.segment import PREDICTION, SegmentWidget
from napari_tomoseg.core import io
from napari_tomoseg.core.phases import COMPOSITE_PHASES


def _jaccard(pred, ref, n):
    """Per-phase Jaccard computed here by hand, where the reference is annotated."""
    keep = (ref > 0) & (pred > 0)
    out = []
    for k in range(1, n + 1):
        p, r = (pred == k) & keep, (ref == k) & keep
        union = (p | r).sum()
        out.append(np.nan if union == 0 else (p & r).sum() / union)
    return np.array(out)


def test_sample_segment_annotate_finetune_evaluate_export(
    sample_viewer, small_phantom, qtbot, wait_job, tmp_path
):
    viewer = sample_viewer
    _, truth = small_phantom
    seg, ann_w, ft, ev, ex = (
        cls(viewer)
        for cls in (SegmentWidget, AnnotateWidget, FinetuneWidget, EvaluateWidget, ExportWidget)
    )
    for w in (seg, ann_w, ft, ev, ex):
        qtbot.addWidget(w.native)

    # 1. segment
    assert seg.run()
    assert wait_job(seg.runner) is JobState.DONE
    first = viewer.layers[PREDICTION].data.copy()
    assert (first > 0).all()

    # 2. copy the prediction into two slices, then correct one region by hand (here: the truth)
    annotations = ann_w.ensure_layer()
    for z in (5, 15):
        viewer.dims.set_current_step(0, z)
        assert ann_w.copy_prediction_slice() > 0
    np.testing.assert_array_equal(annotations.data[5], first[5])
    region = (5, slice(20, 40), slice(20, 40))
    idx = np.nonzero(np.ones((20, 20), bool))
    annotations.data_setitem(
        (np.full(idx[0].shape, 5), idx[0] + 20, idx[1] + 20), truth[region].ravel()
    )
    np.testing.assert_array_equal(annotations.data[region], truth[region])
    assert not annotations.data[6].any()

    # 3. fine-tune a few steps, holding slice 15 out (the picker took the new annotations layer)
    assert ft.annotations.layer is annotations
    ft.budget_kind.value = "steps"
    ft.budget.value = 4
    ft.validate_every.value = 2
    ft.validation.value = "slices"
    ft.held_out.value = "15"
    assert ft.run()
    qtbot.waitUntil(
        lambda: ft.result is not None or ft.runner.state is JobState.FAILED, timeout=120_000
    )
    assert wait_job(ft.runner) is JobState.DONE
    assert ft.result.steps == 4 and ft.result.plan.train_slices == (5,)
    assert ft.result.plan.validation_slices == (15,)

    # 4. segment again with the fine-tuned model, in one click
    annotated = annotations.data.copy()
    ft.segment_again.native.click()
    assert wait_job(seg.runner) is JobState.DONE
    pred_layer = viewer.layers[PREDICTION]
    assert pred_layer.metadata["tomoseg_model"] == "in memory"
    pred = np.asarray(pred_layer.data)
    np.testing.assert_array_equal(annotations.data, annotated)  # annotations never touched

    # 5. evaluate against the annotations: the held-out slice by default
    assert ev.prediction.layer is pred_layer and ev.reference.layer is annotations
    assert ev.held_out_check.value
    assert ev.run()
    assert wait_job(ev.runner) is JobState.DONE
    held = np.zeros_like(annotations.data)
    held[15] = annotations.data[15]
    expected = _jaccard(pred, held, 3)
    np.testing.assert_allclose(ev.result.jaccard, expected)
    assert ev.result.mean_jaccard == pytest.approx(np.nanmean(expected))
    assert "15" in ev.result.region

    # 6. export the prediction with a report, and read it back
    out = tmp_path / "prediction.tif"
    assert ex.labels_layer.layer is pred_layer
    ex.path.value = str(out)
    assert ex.export()
    assert wait_job(ex.runner) is JobState.DONE
    np.testing.assert_array_equal(io.read_labels(out), pred)
    assert io.read_label_phases(out) == COMPOSITE_PHASES
    assert io.read_voxel_size(out) == pytest.approx((1.3, 1.3, 1.3))
    reports = list(tmp_path.glob("prediction-report.json"))
    assert reports and json.loads(reports[0].read_text())


def test_finetune_then_evaluate_scores_only_the_held_out_voxels(
    make_napari_viewer, qtbot, wait_job
):
    """3 annotated slices -> Fine-tune (a band of each held out) -> Segment again -> Evaluate on
    the annotations: exactly the core's numbers on the held-out voxels the run recorded."""
    from napari_tomoseg._napari.layers import apply_phases
    from napari_tomoseg.core.learn.finetune import held_out_mask
    from napari_tomoseg.core.measure.evaluate import evaluate
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom

    ph = make_phantom(PhantomConfig(shape=(16, 64, 64)), seed=3)
    viewer = make_napari_viewer()
    viewer.add_image(ph.volume, name="composite")
    ann = np.zeros_like(ph.labels)
    for z in (3, 8, 12):
        ann[z] = ph.labels[z]
    annotations = viewer.add_labels(ann, name="annotations")
    apply_phases(annotations, COMPOSITE_PHASES)
    seg, ft, ev = (cls(viewer) for cls in (SegmentWidget, FinetuneWidget, EvaluateWidget))
    for w in (seg, ft, ev):
        qtbot.addWidget(w.native)

    ft.budget_kind.value = "steps"
    ft.budget.value = 3
    assert ft.run()
    qtbot.waitUntil(
        lambda: ft.result is not None or ft.runner.state is JobState.FAILED, timeout=120_000
    )
    assert wait_job(ft.runner) is JobState.DONE
    record = ft.result.held_out
    assert record["kind"] == "band" and record["slices"] == [3, 8, 12]
    assert annotations.metadata["tomoseg_held_out"]["model"] == "fine-tuned 1"
    ft.segment_again.native.click()
    assert wait_job(seg.runner) is JobState.DONE
    pred = np.asarray(viewer.layers[PREDICTION].data)

    assert ev.reference.layer is annotations and ev.held_out_check.value
    assert "kept out of fine-tuned 1" in ev.held_out_check.text
    assert ev.run()
    assert wait_job(ev.runner) is JobState.DONE
    mask = held_out_mask(record, ann.shape)
    expected = evaluate(pred, ann, phases=COMPOSITE_PHASES, mask=mask)
    np.testing.assert_array_equal(ev.result.confusion, expected.confusion)
    np.testing.assert_array_equal(ev.result.jaccard, expected.jaccard)
    assert ev.result.mean_jaccard == expected.mean_jaccard or (
        np.isnan(ev.result.mean_jaccard) and np.isnan(expected.mean_jaccard)
    )
    assert ev.result.n_evaluated == int(((ann > 0) & mask & (pred > 0)).sum()) > 0
    assert ev.result.trained_on_voxels == 0 and "held-out bands of slices 3, 8, 12" in (
        ev.result.region
    )
    assert "trained on" not in ev.summary.value
    # everything annotated: the trained-on voxels are counted and the summary warns
    ev.held_out_check.value = False
    assert ev.run()
    assert wait_job(ev.runner) is JobState.DONE
    trained = int(((ann > 0) & ~mask & (pred > 0)).sum())
    assert ev.result.trained_on_voxels == trained > 0
    assert f"includes {trained:,} voxels the model was trained on" in ev.summary.value
