import numpy as np
import pytest

from napari_tomoseg.core.measure.uncertainty import (
    SliceScoreAccumulator,
    disagreement,
    entropy,
    rank_scores,
    rank_slices,
    slice_scores,
)


def test_entropy_is_zero_for_certain_and_one_for_uniform() -> None:
    p = np.zeros((3, 2, 2), np.float32)
    p[0, 0] = 1.0  # certain
    p[:, 1] = 1 / 3  # uniform
    h = entropy(p)
    np.testing.assert_allclose(h[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(h[1], 1.0, atol=1e-6)


def test_entropy_of_two_phases_matches_formula() -> None:
    p = np.array([[0.9], [0.1]], np.float32)
    expected = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1)) / np.log(2)
    np.testing.assert_allclose(entropy(p), [expected], rtol=1e-5)


def test_entropy_needs_two_phases() -> None:
    with pytest.raises(ValueError, match=">= 2 phases"):
        entropy(np.ones((1, 4)))


def test_disagreement_counts_the_minority() -> None:
    a = np.array([1, 1, 1, 2])
    b = np.array([1, 2, 1, 3])
    c = np.array([1, 2, 3, 1])
    np.testing.assert_allclose(disagreement([a, b, c]), [0, 1 / 3, 1 / 3, 2 / 3], atol=1e-6)


def test_rank_slices_orders_skips_annotated_and_spreads() -> None:
    u = np.zeros((20, 4, 4), np.float32)
    u[5] = 0.9
    u[6] = 0.85  # neighbour of 5: excluded by spacing
    u[12] = 0.5
    u[17] = 0.7
    annotations = np.zeros(u.shape, np.uint8)
    annotations[17, 0, 0] = 1  # 17 is annotated already
    ranked = rank_slices(u, axis=0, n=3, annotations=annotations, min_spacing=1)
    assert [s.index for s in ranked] == [5, 12, 0]
    assert ranked[0].score == pytest.approx(0.9)
    assert 6 not in [s.index for s in ranked] and 17 not in [s.index for s in ranked]


def test_rank_slices_along_another_axis_with_mask() -> None:
    u = np.zeros((4, 6, 5), np.float32)
    u[:, 3, :] = 1.0
    u[:, 1, 0] = 1.0
    mask = np.ones(u.shape, bool)
    mask[:, 1, 1:] = False  # slice y=1 is fully uncertain inside the mask
    scores = slice_scores(u, axis=1, mask=mask)
    assert scores[1] == pytest.approx(1.0) and scores[3] == pytest.approx(1.0)
    ranked = rank_slices(u, axis=1, n=2, mask=mask, min_spacing=0)
    assert sorted(s.index for s in ranked) == [1, 3]


def test_rank_slices_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n must be"):
        rank_slices(np.zeros((2, 2, 2)), n=0)
    with pytest.raises(ValueError, match="annotations shape"):
        rank_slices(np.zeros((2, 2, 2)), annotations=np.zeros((2, 2, 3)))


def test_slice_score_accumulator_equals_slice_scores_of_the_assembled_map() -> None:
    rng = np.random.default_rng(4)
    u = rng.random((10, 12, 9), dtype=np.float32)
    acc = SliceScoreAccumulator(u.shape)
    # uneven, disjoint blocks, the way a segmentation streams them
    for z0, z1 in ((0, 3), (3, 8), (8, 10)):
        for y0, y1 in ((0, 5), (5, 12)):
            acc.add((slice(z0, z1), slice(y0, y1), slice(0, 9)), u[z0:z1, y0:y1])
    for axis in range(3):
        np.testing.assert_allclose(acc.scores(axis), slice_scores(u, axis=axis), rtol=1e-6)
    half = SliceScoreAccumulator(u.shape)
    half.add((slice(0, 4), slice(0, 12), slice(0, 9)), u[:4])
    assert np.isnan(half.scores(0)[4:]).all() and not np.isnan(half.scores(0)[:4]).any()


def test_rank_scores_skips_annotated_and_nan_slices() -> None:
    scores = np.array([0.1, 0.9, np.nan, 0.8, 0.5, 0.7])
    ranked = rank_scores(scores, n=3, skip=[1], min_spacing=0)
    assert [s.index for s in ranked] == [3, 5, 4]
    assert rank_scores(scores, n=2, skip=[1], min_spacing=1)[1].index == 5
    with pytest.raises(ValueError, match="slices to skip"):
        rank_scores(scores, skip=[6])
