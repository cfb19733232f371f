import numpy as np
import pytest

from napari_tomoseg.core.measure.metrics import (
    ConfusionAccumulator,
    confusion_matrix,
    jaccard_per_phase,
    mean_jaccard,
    phase_fractions,
)


def test_jaccard_known_values():
    ref = np.array([1, 1, 1, 1, 2, 2, 3, 0])
    pred = np.array([1, 1, 1, 2, 2, 3, 3, 3])  # last voxel not annotated: ignored
    # matrix: TP 3, FN 1, FP 0 -> 3/4 ; fibre: TP 1, FP 1, FN 1 -> 1/3 ; pore: TP 1, FP 1 -> 1/2
    np.testing.assert_allclose(jaccard_per_phase(pred, ref, 3), [3 / 4, 1 / 3, 1 / 2])
    assert mean_jaccard([3 / 4, 1 / 3, 1 / 2]) == pytest.approx((3 / 4 + 1 / 3 + 1 / 2) / 3)


def test_absent_phase_is_nan_not_zero_or_one():
    ref = np.array([[1, 1], [2, 2]])
    scores = jaccard_per_phase(ref, ref, 3)
    assert scores[0] == 1.0 and scores[1] == 1.0 and np.isnan(scores[2])
    assert mean_jaccard(scores) == 1.0
    assert np.isnan(mean_jaccard([np.nan, np.nan]))


def test_phase_predicted_but_absent_from_reference_scores_zero():
    ref = np.array([1, 1, 1])
    pred = np.array([1, 1, 3])
    np.testing.assert_allclose(jaccard_per_phase(pred, ref, 3), [2 / 3, np.nan, 0.0])


def test_prediction_zero_counts_as_miss_not_false_positive():
    ref = np.array([1, 2])
    pred = np.array([0, 2])
    cm = confusion_matrix(pred, ref, 2)
    assert cm[1, 0] == 1
    np.testing.assert_allclose(jaccard_per_phase(pred, ref, 2), [0.0, 1.0])


def test_mask_restricts_counting():
    ref = np.array([1, 1, 2, 2])
    pred = np.array([2, 1, 2, 1])
    mask = np.array([False, True, True, False])
    np.testing.assert_allclose(jaccard_per_phase(pred, ref, 2, mask=mask), [1.0, 1.0])


def test_accumulator_equals_whole_volume():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, (6, 10, 10))
    pred = rng.integers(1, 4, (6, 10, 10))
    acc = ConfusionAccumulator(3)
    for z in range(6):
        acc.update(pred[z], ref[z])
    np.testing.assert_array_equal(acc.matrix, confusion_matrix(pred, ref, 3))
    np.testing.assert_allclose(acc.jaccard(), jaccard_per_phase(pred, ref, 3))
    assert acc.n_voxels == int((ref > 0).sum())
    acc.reset()
    assert acc.n_voxels == 0


@pytest.mark.parametrize(
    ("pred", "ref", "match"),
    [
        (np.zeros((2, 2), int), np.zeros((2, 3), int), "shape"),
        (np.zeros(3, int), np.array([0, 1, 5]), "outside 0..3"),
        (np.zeros(3, float), np.zeros(3, int), "integer"),
    ],
)
def test_bad_input(pred, ref, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, ref, 3)


def test_phase_fractions():
    lab = np.array([0, 1, 1, 2, 3, 3, 3, 3])
    np.testing.assert_allclose(phase_fractions(lab, 3), [2 / 7, 1 / 7, 4 / 7])
