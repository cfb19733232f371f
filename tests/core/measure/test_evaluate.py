"""core.measure.evaluate: Jaccard, confusion, fractions and baseline by hand on small volumes;
streaming by slabs gives the same numbers as one pass; progress, cancel and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tomoseg.core.measure import evaluate as ev
from napari_tomoseg.core.measure.baseline import GreyLevelClassifier
from napari_tomoseg.core.measure.evaluate import (
    Evaluation,
    EvaluationProgress,
    evaluate,
    iter_evaluate,
)
from napari_tomoseg.core.measure.metrics import confusion_matrix, jaccard_from_confusion
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import Cancelled, CancelToken

TWO = PhaseTable.from_names(["matrix", "fibre"])
THREE = PhaseTable.from_names(["matrix", "fibre", "pore"])


@pytest.fixture
def two_phase():
    """A (2, 4, 4) reference: rows 0-1 fibre (2), rows 2-3 matrix (1); the prediction calls four
    fibre voxels of slice 0 matrix. Image: grey 200 on fibre, 50 on matrix."""
    ref = np.ones((2, 4, 4), np.uint8)
    ref[:, :2] = 2
    pred = ref.copy()
    pred[0, 0, :] = 1
    image = np.where(ref == 2, 200, 50).astype(np.uint8)
    return pred, ref, image


def test_jaccard_by_hand_and_absent_phase_is_nan(two_phase):
    pred, ref, _ = two_phase
    r = evaluate(pred, ref, phases=THREE)
    # matrix: TP 16, FP 4 -> 16/20; fibre: TP 12, FN 4 -> 12/16; pore absent from both -> NaN
    np.testing.assert_allclose(r.jaccard[:2], [16 / 20, 12 / 16])
    assert np.isnan(r.jaccard[2])
    assert r.mean_jaccard == pytest.approx((16 / 20 + 12 / 16) / 2)
    assert r.confusion.shape == (4, 4)
    assert r.confusion[2, 1] == 4 and r.confusion[2, 2] == 12 and r.confusion[1, 1] == 16
    assert r.n_evaluated == 32
    np.testing.assert_allclose(r.prediction_fractions, [20 / 32, 12 / 32, 0])
    np.testing.assert_allclose(r.reference_fractions, [16 / 32, 16 / 32, 0])
    assert r.prediction_voxels.tolist() == [20, 12, 0]
    assert r.baseline_jaccard is None and r.baseline_note == ""
    assert r.region == "all annotated voxels"
    # per-slice profile: slice 0 has 12 matrix and 4 fibre voxels, slice 1 half and half
    np.testing.assert_allclose(r.profile, [[12 / 16, 4 / 16, 0], [0.5, 0.5, 0]])


def test_baseline_column_by_hand(two_phase):
    pred, ref, image = two_phase
    r = evaluate(pred, ref, phases=TWO, image=image)
    # grey levels separate the phases perfectly: the baseline scores 1 where the U-Net does not
    np.testing.assert_allclose(r.baseline_jaccard, [1.0, 1.0])
    assert r.baseline_mean == 1.0
    assert "fitted on the reference itself" in r.baseline_note
    header, rows = r.table()
    assert header[:3] == ["phase", "Jaccard U-Net", "Jaccard grey-level"]
    assert rows[1][:3] == ["fibre", pytest.approx(0.75), 1.0]
    assert rows[-1][:3] == ["mean", pytest.approx((0.8 + 0.75) / 2), 1.0]
    assert r.to_json()["grey_level_baseline"]["jaccard"] == {"matrix": 1.0, "fibre": 1.0}


def test_baseline_fitted_outside_the_held_out_slices():
    # Slice 0 (training) maps grey 10 -> phase 1, 20 -> phase 2; slice 1 (held out) is swapped,
    # so a classifier fitted outside the held-out slice gets every held-out voxel wrong.
    image = np.zeros((2, 2, 2), np.uint8)
    image[:, 0], image[:, 1] = 10, 20
    ref = np.zeros((2, 2, 2), np.uint8)
    ref[0, 0], ref[0, 1] = 1, 2
    ref[1, 0], ref[1, 1] = 2, 1
    r = evaluate(ref, ref, phases=TWO, image=image, region=(0, [1]))
    np.testing.assert_allclose(r.jaccard, [1.0, 1.0])
    np.testing.assert_allclose(r.baseline_jaccard, [0.0, 0.0])
    assert r.n_evaluated == 4 and r.region == "held-out slices 1 along z"
    assert "outside the held-out" in r.baseline_note
    # nothing annotated outside the held-out slices: no baseline, and the note says why
    only = np.where(np.arange(2)[:, None, None] == 1, ref, 0).astype(np.uint8)
    r = evaluate(ref, only, phases=TWO, image=image, region=(0, [1]))
    assert r.baseline_jaccard is None and r.baseline_note.startswith("not computed")


def test_region_along_y_mask_and_outside_voxels():
    ref = np.ones((3, 4, 5), np.uint8)
    ref[:, :, 3:] = 2
    pred = ref.copy()
    pred[:, 1, :] = 2  # wrong on row 1 only
    pred[0, 2, 0] = 0  # outside the prediction's mask
    r = evaluate(pred, ref, phases=TWO, region=(1, [2, 3, 99]))
    assert r.region == "held-out slices 2, 3 along y"
    assert r.n_evaluated == 3 * 2 * 5 - 1 and r.jaccard.tolist() == [1.0, 1.0]
    # the outside voxel counts as a miss when it is not left out
    r = evaluate(pred, ref, phases=TWO, region=(1, [2]), exclude_outside=False)
    assert r.confusion[1, 0] == 1 and r.jaccard[0] == pytest.approx(8 / 9)
    mask = np.zeros(ref.shape, bool)
    mask[:, 1] = True
    r = evaluate(pred, ref, phases=TWO, mask=mask)
    assert r.n_evaluated == 15 and r.jaccard[0] == 0.0 and r.jaccard[1] == pytest.approx(6 / 15)


def test_errors_out_marks_the_misclassified_scored_voxels(two_phase):
    pred, ref, _ = two_phase
    pred = pred.copy()
    pred[1, 3, 3] = 0  # outside: left out, so not an error
    errors = np.full(ref.shape, 7, np.uint8)
    evaluate(pred, ref, phases=TWO, errors_out=errors)
    np.testing.assert_array_equal(errors, ((pred != ref) & (pred > 0)).astype(np.uint8))


def test_streaming_by_slabs_matches_one_pass(monkeypatch):
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, (9, 10, 11), dtype=np.uint8)
    pred = rng.integers(0, 4, (9, 10, 11), dtype=np.uint8)
    image = (ref * 40 + rng.integers(0, 60, ref.shape)).astype(np.uint8)
    whole = evaluate(pred, ref, phases=THREE, image=image)
    monkeypatch.setattr(ev, "SLAB_VOXELS", 2 * 10 * 11)  # slabs of 2 slices, the last of 1
    events = list_events(pred, ref, image)
    sliced = events.pop()
    assert len({e.total for e in events}) == 1 and events[-1].done == events[-1].total
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert {e.step for e in events} == {"comparing", "grey-level baseline"}
    cm = confusion_matrix(pred, ref, 3, mask=pred > 0)
    for r in (whole, sliced):
        np.testing.assert_array_equal(r.confusion, cm)
        np.testing.assert_allclose(r.jaccard, jaccard_from_confusion(cm))
        grey = GreyLevelClassifier(3).fit(image, ref).predict(image)
        np.testing.assert_allclose(
            r.baseline_jaccard,
            jaccard_from_confusion(confusion_matrix(grey, ref, 3, mask=pred > 0)),
        )
    np.testing.assert_allclose(sliced.profile, whole.profile)


def list_events(pred, ref, image):
    gen = iter_evaluate(pred, ref, phases=THREE, image=image)
    out: list = []
    while True:
        try:
            out.append(next(gen))
        except StopIteration as stop:
            assert isinstance(stop.value, Evaluation)
            return [*out, stop.value]
        assert isinstance(out[-1], EvaluationProgress)


def test_cancel_stops_between_slabs(two_phase):
    pred, ref, _ = two_phase
    token = CancelToken()
    gen = iter_evaluate(pred, ref, phases=TWO, cancel=token)
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"reference": np.ones((2, 4, 5), np.uint8)}, "differ in shape"),
        ({"image": np.ones((2, 4, 5), np.uint8)}, "image"),
        ({"reference": np.zeros((2, 4, 4), np.uint8)}, "no labelled voxel"),
        ({"region": (0, [5, 6])}, "outside the volume"),
        ({"reference": np.full((2, 4, 4), 3, np.uint8)}, "outside 0..2"),
    ],
)
def test_bad_input_says_what_is_wrong(two_phase, change, match):
    pred, ref, _ = two_phase
    args = {"reference": ref, **change}
    with pytest.raises(ValueError, match=match):
        evaluate(pred, args.pop("reference"), phases=TWO, **args)
    with pytest.raises(ValueError, match="3D"):
        evaluate(pred[0], ref[0], phases=TWO)


def test_table_and_json_with_voxel_size(two_phase):
    pred, ref, _ = two_phase
    r = evaluate(
        pred,
        ref,
        phases=THREE,
        voxel_size=(2.0, 1.0, 0.5),
        prediction_name="pred.tif",
        reference_name="truth.tif",
    )
    header, rows = r.table()
    assert header == [
        "phase",
        "Jaccard U-Net",
        "fraction (prediction)",
        "fraction (reference)",
        "volume (µm³)",
    ]
    assert rows[0][-1] == pytest.approx(20 * 1.0) and rows[2][1] is None  # pore: n/a
    j = r.to_json()
    assert (j["prediction"], j["reference"]) == ("pred.tif", "truth.tif")
    assert j["jaccard"]["pore"] is None and j["grey_level_baseline"] is None
    assert j["confusion_matrix"]["columns"] == ["none", "matrix", "fibre", "pore"]
    assert j["confusion_matrix"]["counts"]["fibre"] == [0, 4, 12, 0]


def test_held_out_mask_trained_on_voxels_and_the_baseline_fitted_outside():
    # Columns 0-1 of slice 0 were trained on; columns 2-3 held out (a band). The grey levels swap
    # meaning in the band, so a baseline fitted outside it gets every held-out voxel wrong.
    image = np.zeros((1, 2, 4), np.uint8)
    image[:, 0], image[:, 1] = 10, 20
    ref = np.zeros((1, 2, 4), np.uint8)
    ref[0, 0, :2], ref[0, 1, :2] = 1, 2
    ref[0, 0, 2:], ref[0, 1, 2:] = 2, 1
    band = np.zeros(ref.shape, bool)
    band[..., 2:] = True
    r = evaluate(
        ref,
        ref,
        phases=TWO,
        image=image,
        mask=band,
        held_out=True,
        region_name="held-out band",
        trained_on=~band,
    )
    assert r.n_evaluated == 4 and r.region == "held-out band"
    assert r.trained_on_voxels == 0 and r.to_json()["trained_on_voxels"] == 0
    np.testing.assert_allclose(r.baseline_jaccard, [0.0, 0.0])
    assert "outside the held-out" in r.baseline_note
    # every annotated voxel: the trained-on ones are counted, and the report warns
    r = evaluate(ref, ref, phases=TWO, trained_on=~band)
    assert r.trained_on_voxels == 4 and r.n_evaluated == 8
    from napari_tomoseg.core.measure.report import evaluation_text

    assert "includes 4 voxels the model was trained on: scores are optimistic" in (
        evaluation_text(r)
    )
    # without a trained-on mask nothing is known, and nothing is claimed
    r = evaluate(ref, ref, phases=TWO)
    assert r.trained_on_voxels is None and "trained on" not in evaluation_text(r)


def test_held_out_comparison_says_which_model_was_kept():
    from types import SimpleNamespace

    from napari_tomoseg.core.measure.report import held_out_comparison, trained_scores

    start = {"matrix": 0.9, "fibre": 0.8}
    better = {"matrix": 0.95, "fibre": 0.85}
    lines = held_out_comparison(start, better, "fine-tuned")
    assert lines[0] == "Kept the fine-tuned model: held-out Jaccard 0.850 → 0.900"
    assert lines[1] == "per phase: matrix 0.900 → 0.950, fibre 0.800 → 0.850"
    history = [
        SimpleNamespace(validation=None),
        SimpleNamespace(validation=(0.7, 0.8)),
        SimpleNamespace(validation=(0.8, float("nan"))),
    ]
    best = trained_scores(history, ["matrix", "fibre"])  # the last validation
    assert best == {"matrix": 0.8, "fibre": pytest.approx(float("nan"), nan_ok=True)}
    lines = held_out_comparison(start, start, "start", best)
    assert lines[0].startswith(
        "Kept the starting model: training did not beat it on the held-out voxels (0.850 vs trained 0.800)"
    )
    assert "annotate where it is wrong and fine-tune again" in lines[0]
    assert trained_scores(history[:1], ["matrix", "fibre"]) is None
    lines = held_out_comparison(None, better, "fine-tuned", start_scored="its output layer is new")
    assert (
        lines[0]
        == "held-out Jaccard 0.900 (the starting model was not scored: its output layer is new)"
    )
    assert held_out_comparison(None, None, "fine-tuned")[0].startswith("no held-out voxels")


def test_held_out_comparison_shows_the_means_that_decided():
    from napari_tomoseg.core.measure.report import held_out_comparison

    # the pore's few held-out voxels did not rank the models: the start wins on matrix and fibre
    start = {"matrix": 0.995, "fibre": 0.977, "pore": 0.767}
    trained = {"matrix": 0.994, "fibre": 0.970, "pore": 0.828}
    lines = held_out_comparison(start, start, "start", trained, compared=("matrix", "fibre"))
    assert lines[0].startswith(
        "Kept the starting model: training did not beat it on the held-out voxels of matrix, "
        "fibre (0.986 vs trained 0.982; pore: too few held-out voxels to compare)"
    )
    assert lines[1].endswith("pore 0.767 vs 0.828")  # every phase is still listed
    lines = held_out_comparison(trained, start, "fine-tuned", compared=("matrix", "fibre"))
    assert lines[0] == (
        "Kept the fine-tuned model: held-out Jaccard of matrix, fibre 0.982 → 0.986 "
        "(pore: too few held-out voxels to compare)"
    )
    lines = held_out_comparison(start, trained, "fine-tuned", compared=("matrix", "fibre", "pore"))
    assert lines[0] == "Kept the fine-tuned model: held-out Jaccard 0.913 → 0.931"
