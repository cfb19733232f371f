import numpy as np
import pytest
import torch

from napari_tomoseg.core.learn.losses import (
    masked_cross_entropy,
    phase_weights,
    prior_corrected_weights,
    soft_jaccard_loss,
)


def _logits_for(labels: torch.Tensor, n: int, scale: float = 50.0) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(labels.clamp(min=1) - 1, n).movedim(-1, 1).float()
    return onehot * scale


def test_soft_jaccard_matches_hand_computation():
    # one image of 4 voxels, 2 phases; logits chosen so softmax p(phase 1) = [0.5, 0.5, 0.5, 0.5]
    logits = torch.zeros(1, 2, 1, 4)
    target = torch.tensor([[[1, 1, 2, 0]]])  # last voxel not annotated
    # phase 1: y = [1,1,0], p = [.5,.5,.5] -> I = 1, sum y^2 = 2, sum p^2 = .75 -> 1 - 2/(2.75 - 1 + 1)
    # phase 2: y = [0,0,1], p = [.5,.5,.5] -> I = .5, sum y^2 = 1, sum p^2 = .75 -> 1 - 1.5/(1.75 - .5 + 1)
    expected = ((1 - 2 / 2.75) + (1 - 1.5 / 2.25)) / 2
    assert soft_jaccard_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_soft_jaccard_near_zero_for_perfect_prediction_and_high_for_wrong():
    target = torch.randint(1, 4, (2, 8, 8))
    assert soft_jaccard_loss(_logits_for(target, 3), target).item() < 0.01
    wrong = (target % 3) + 1
    assert soft_jaccard_loss(_logits_for(wrong, 3), target).item() > 0.95


def test_unannotated_voxels_give_no_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, 0, 0] = 2
    (soft_jaccard_loss(logits, target) + masked_cross_entropy(logits, target)).backward()
    grad = logits.grad.abs().sum(dim=1)[0]
    assert grad[0, 0] > 0
    grad[0, 0] = 0
    assert torch.all(grad == 0)


def test_rare_phase_weighs_like_the_matrix():
    # 99 matrix voxels right, 1 pore voxel wrong: the phase-averaged loss stays large.
    target = torch.ones(1, 1, 100, dtype=torch.long)
    target[0, 0, 0] = 2
    pred = torch.ones_like(target)
    loss = soft_jaccard_loss(_logits_for(pred, 2), target).item()
    # The pore term alone is 1 - (0 + 1) / (1 + 0 - 0 + 1) = 0.5; averaged with ~0 for the matrix.
    assert loss == pytest.approx(0.25, abs=0.01)  # 25x the 1 % voxel error rate


def test_cross_entropy_ignores_unannotated_and_handles_empty():
    logits = torch.randn(1, 3, 5)
    target = torch.tensor([[0, 1, 2, 3, 0]])
    expected = torch.nn.functional.cross_entropy(logits[..., 1:4], target[:, 1:4] - 1)
    assert masked_cross_entropy(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    assert masked_cross_entropy(logits, torch.zeros_like(target)).item() == 0.0


def test_phase_weights_inverse_sqrt_frequency():
    w = phase_weights([9900, 0, 100]).numpy()
    assert w[1] == 0.0
    assert w[2] / w[0] == pytest.approx(np.sqrt(99), rel=1e-4)
    assert w[[0, 2]].mean() == pytest.approx(1.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="do not match"):
        soft_jaccard_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))


def test_prior_corrected_weights_equal_phase_weights_when_shares_match():
    counts = [7000, 2500, 500]
    prior = [0.70, 0.25, 0.05]
    torch.testing.assert_close(
        prior_corrected_weights(counts, prior, 0.5), phase_weights(counts, 0.5)
    )


def test_prior_corrected_weights_give_whole_slice_weighting_to_strokes():
    # strokes: the pore holds 10 % of the annotated voxels but 0.5 % of the slice
    strokes = torch.tensor([6000.0, 3000.0, 1000.0])
    prior = torch.tensor([0.695, 0.30, 0.005])
    w = prior_corrected_weights(strokes, prior, 0.5)
    whole = phase_weights(prior * 1e6, 0.5)
    # each phase's total weight (share x weight) is what whole slices of that prior would give
    share = strokes / strokes.sum()
    torch.testing.assert_close(
        (share * w) / (share * w).sum(), (prior * whole) / (prior * whole).sum()
    )
    assert w[2] < w[0]  # the over-painted pore now weighs less per voxel than the matrix
    # a phase absent from the annotations keeps weight 0
    assert prior_corrected_weights([10, 0, 5], [0.5, 0.3, 0.2])[1] == 0


def test_guided_targets_add_only_their_weighted_cross_entropy():
    from napari_tomoseg.core.learn.losses import loss_from_terms, loss_terms, split_guide

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g)
    target = torch.randint(0, 7, (2, 8, 8), generator=g)  # 1..3 annotated, 4..6 guided
    annotated, guide = split_guide(target, 3)
    assert ((annotated > 0) & (guide > 0)).sum() == 0
    assert torch.equal(annotated[target <= 3], target[target <= 3])
    assert torch.equal(guide[target > 3], target[target > 3] - 3)
    w = phase_weights([5, 100, 30])
    plain = soft_jaccard_loss(logits, annotated) + masked_cross_entropy(logits, annotated, weight=w)
    terms = loss_terms(logits, target, weight=w, guided=True)
    expected = plain + 0.5 * masked_cross_entropy(logits, guide)
    assert loss_from_terms(terms, guide=0.5).item() == pytest.approx(expected.item(), rel=1e-6)
    # summed over shards, guided terms still give the whole batch's loss
    parts = loss_terms(logits[:1], target[:1], weight=w, guided=True) + loss_terms(
        logits[1:], target[1:], weight=w, guided=True
    )
    assert loss_from_terms(parts, guide=0.5).item() == pytest.approx(expected.item(), rel=1e-6)
    # the Jaccard never sees a guess: guessing every voxel wrong leaves it as it was
    wrong = torch.where(target > 3, 4 + (target - 4 + 1) % 3, target)
    assert loss_from_terms(loss_terms(logits, wrong, weight=w, guided=True), guide=0.0).item() == (
        pytest.approx(plain.item(), rel=1e-6)
    )
