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


def test_rank_slices_skips_annotated_and_spreads() -> None:
    u = np.full((20, 4, 4), 0.3, np.float32)
    u[5] = 0.9
    u[6] = 0.85  # neighbour of 5: covered once 5 is picked
    u[12] = 0.5
    u[17] = 0.7
    annotations = np.zeros(u.shape, np.uint8)
    annotations[17, 0, 0] = 1  # 17 is annotated already
    ranked = rank_slices(u, axis=0, n=2, annotations=annotations)
    assert [s.index for s in ranked] == [5, 12]
    assert ranked[0].score == pytest.approx(0.9)
    assert ranked[1].score == pytest.approx(0.5) and 0 < ranked[1].coverage < ranked[0].coverage


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
    scores = np.array([0.1, 0.9, np.nan, 0.8, 0.5, 0.7, 0.6, 0.1])
    ranked = rank_scores(scores, n=3, skip=[1])
    picked = [s.index for s in ranked]
    assert len(picked) == 3 and not {1, 2} & set(picked)
    assert 0 not in picked and 7 not in picked  # the ends: only when nothing else is left
    everything = [s.index for s in rank_scores(scores, n=10, skip=[1])]
    assert sorted(everything[:4]) == [3, 4, 5, 6] and sorted(everything[4:]) == [0, 7]
    with pytest.raises(ValueError, match="slices to skip"):
        rank_scores(scores, skip=[8])


def test_the_second_pick_is_not_next_to_the_first() -> None:
    # a 20-slice stack whose two most uncertain slices sit side by side near one end
    scores = np.linspace(0.4, 0.2, 20)
    scores[4], scores[5] = 0.6, 0.58
    ranked = rank_scores(scores, n=3)
    picked = [s.index for s in ranked]
    assert picked[0] == 4
    assert all(abs(picked[1] - p) > 1 for p in picked[:1])
    assert min(abs(a - b) for a in picked for b in picked if a != b) >= 3
    # without the coverage factor (pure uncertainty, ``scale`` tiny) the neighbour would come next
    assert [s.index for s in rank_scores(scores, n=2, scale=1e-3)] == [4, 5]


def test_annotated_slices_are_never_picked_and_their_neighbours_are_penalised() -> None:
    scores = np.full(30, 0.2)
    scores[10], scores[11] = 0.35, 0.3
    alone = [s.index for s in rank_scores(scores, n=1)]
    assert alone == [10]
    ranked = rank_scores(scores, n=1, skip=[10])
    assert ranked[0].index not in (9, 10, 11)
    # the neighbour's score is weighed down by its coverage factor: ~1/L next to an annotation
    # L = 30 / 4 slices: the neighbour keeps 1 - exp(-1 / 7.5) of its score
    penalised = rank_scores(scores[10:], n=1, skip=[0])[0]
    assert penalised.index != 1 and penalised.coverage > 0.5
    assert rank_scores(scores[9:12], n=1, skip=[1])[0].coverage == pytest.approx(
        1 - np.exp(-1 / (3 / 4))
    )
    everything = [s.index for s in rank_scores(scores, n=30, skip=[3, 10])]
    assert sorted(everything) == sorted(set(range(30)) - {3, 10})
    values = [s.score * s.coverage for s in rank_scores(np.random.default_rng(1).random(40), n=40)]
    ends = values[-2:]  # the two outermost slices come last
    assert values[:-2] == sorted(values[:-2], reverse=True) and len(ends) == 2


def test_equal_scores_spread_like_an_even_design_and_avoid_the_ends() -> None:
    picked = sorted(s.index for s in rank_scores(np.full(64, 0.2), n=3))
    assert picked[1] in (31, 32)
    assert 8 <= picked[0] <= 13 and 50 <= picked[2] <= 55
    # continuing from annotations picks the widest gap, away from the end
    assert rank_scores(np.full(64, 0.2), n=1, skip=[32])[0].index in range(8, 14)
    scores = np.full(16, 0.1)
    scores[0] = scores[-1] = 0.9  # artefact-laden ends: the most uncertain, yet not suggested
    assert {s.index for s in rank_scores(scores, n=3)}.isdisjoint({0, 15})
    assert [s.index for s in rank_scores(np.array([0.9, 0.1, 0.9]), n=3)] == [1, 0, 2]


def test_rank_scores_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="scores must be >= 0"):
        rank_scores(np.array([0.1, -0.2, 0.3]))
    with pytest.raises(ValueError, match="scale must be > 0"):
        rank_scores(np.ones(5), scale=0)
    with pytest.raises(ValueError, match="min_spacing"):
        rank_scores(np.ones(5), min_spacing=-1)
    assert rank_scores(np.full(4, np.nan)) == []
    assert [s.index for s in rank_scores(np.ones(9), n=3, skip=[4], min_spacing=2)] == [1, 7]
