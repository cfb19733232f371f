"""Fine-tuning: planning rules, data never modified, phases and heads, reproducibility, improvement."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_tomoseg.core.learn.finetune import (
    HOLDOUT,
    MIN_RANKING_VOXELS,
    FinetuneConfig,
    band_mask,
    finetune,
    held_out_mask,
    iter_finetune,
    plan_finetune,
)
from napari_tomoseg.core.measure.metrics import jaccard_per_phase
from napari_tomoseg.core.model import bundled_model_path, load_model
from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom
from napari_tomoseg.core.phantom.strokes import stroke_annotations
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import CancelToken
from napari_tomoseg.core.segment import InferenceConfig, segment_volume

FAST = FinetuneConfig(budget=None, steps=3, crop=32, batch_size=2, validate_every=2)


@pytest.fixture(scope="module")
def base():
    return load_model(bundled_model_path())


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(PhantomConfig(shape=(16, 64, 64)), seed=3)


def annotate(truth: np.ndarray, slices: list[int], axis: int = 0) -> np.ndarray:
    ann = np.zeros_like(truth)
    idx = [slice(None)] * 3
    idx[axis] = slices
    ann[tuple(idx)] = truth[tuple(idx)]
    return ann


# --- planning ---------------------------------------------------------------------------------


def test_few_slices_hold_out_a_band_of_each(phantom, base) -> None:
    ann = annotate(phantom.labels, [3, 9, 12])
    plan = plan_finetune(ann.shape, ann, base=base)
    assert plan.validation == "band"
    assert plan.train_slices == (3, 9, 12) and plan.validation_slices == (3, 9, 12)
    assert plan.axis == 0 and plan.phases is base.phases and not plan.replace_head


def test_many_slices_hold_out_whole_slices(phantom, base) -> None:
    ann = annotate(phantom.labels, [1, 3, 5, 7, 9, 11])
    plan = plan_finetune(ann.shape, ann, base=base)
    assert plan.validation == "slices"
    assert len(plan.validation_slices) == 1
    assert set(plan.train_slices) | set(plan.validation_slices) == {1, 3, 5, 7, 9, 11}
    assert not set(plan.train_slices) & set(plan.validation_slices)
    assert plan.validation_slices[0] not in (1, 11)


def test_user_chosen_validation_slices_and_axis(phantom, base) -> None:
    ann = annotate(phantom.labels, [10, 20, 40], axis=2)
    cfg = FinetuneConfig(validation="slices", validation_slices=(20,))
    plan = plan_finetune(ann.shape, ann, base=base, config=cfg)
    assert plan.axis == 2 and plan.train_slices == (10, 40) and plan.validation_slices == (20,)
    with pytest.raises(ValueError, match="hold no annotation"):
        plan_finetune(ann.shape, ann, base=base, config=replace(cfg, validation_slices=(21,)))


def test_band_mask_holds_about_holdout_of_the_annotations() -> None:
    labels = np.zeros((50, 100), np.uint8)
    labels[:, 10:60] = 1  # a painted region
    band = band_mask(labels)
    held = int((band & (labels > 0)).sum())
    assert HOLDOUT - 0.05 <= held / int((labels > 0).sum()) <= HOLDOUT + 0.05
    cols = np.flatnonzero(band.any(axis=0))
    assert np.all(np.diff(cols) == 1)  # one contiguous band


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda t: np.zeros_like(t), "no annotated voxel"),
        (lambda t: np.zeros((4, 4, 4), np.uint8), "must match voxel for voxel"),
        (lambda t: t.astype(np.float32), "integer phase ids"),
        (lambda t: t > 0, "boolean"),
    ],
)
def test_bad_annotations_are_refused(phantom, base, make, message) -> None:
    with pytest.raises(ValueError, match=message):
        plan_finetune(phantom.labels.shape, make(phantom.labels), base=base)


def test_ids_outside_the_given_phase_table_are_refused(phantom, base) -> None:
    ann = annotate(phantom.labels, [4])
    with pytest.raises(ValueError, match="lacks"):
        plan_finetune(ann.shape, ann, base=base, phases=PhaseTable.from_names(["a", "b"]))


def test_two_phase_annotations_get_a_new_head_with_a_note(phantom, base) -> None:
    ann = np.where(annotate(phantom.labels, [4]) == 3, 1, annotate(phantom.labels, [4]))
    plan = plan_finetune(ann.shape, ann, base=base)
    assert plan.replace_head and len(plan.phases) == 2
    assert plan.phases.names == ("phase 1", "phase 2")
    assert any("new output layer" in n for n in plan.notes)


def test_gap_in_ids_without_a_base_is_refused_and_subset_of_base_keeps_its_table(
    phantom, base
) -> None:
    ann = np.zeros(phantom.labels.shape, np.uint8)
    ann[2, :5] = 1
    ann[2, 5:10] = 3
    with pytest.raises(ValueError, match="but not \\[2\\]"):
        plan_finetune(ann.shape, ann, base=None)
    plan = plan_finetune(ann.shape, ann, base=base)
    assert plan.phases is base.phases and not plan.replace_head
    assert any("not annotated" in n for n in plan.notes)


def test_one_phase_is_a_warning_note(phantom, base) -> None:
    ann = np.zeros(phantom.labels.shape, np.uint8)
    ann[2] = 1
    plan = plan_finetune(ann.shape, ann, base=base, phases=base.phases)
    assert any("cannot learn to separate" in n for n in plan.notes)


def test_mode_mismatch_with_the_base_model_is_refused(phantom, base) -> None:
    ann = annotate(phantom.labels, [4])
    with pytest.raises(ValueError, match="cannot be fine-tuned in mode '3d'"):
        plan_finetune(ann.shape, ann, base=base, config=FinetuneConfig(mode="3d"))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="budget must be > 0"):
        FinetuneConfig(budget=0)
    with pytest.raises(ValueError, match="budget"):
        FinetuneConfig(budget=None, steps=None)
    with pytest.raises(ValueError, match="validation_slices"):
        FinetuneConfig(validation="slices")


# --- training ---------------------------------------------------------------------------------


def test_finetune_never_modifies_its_inputs_and_records_provenance(phantom, base) -> None:
    vol = phantom.volume.copy()
    ann = annotate(phantom.labels, [3, 12])
    ann_copy = ann.copy()
    before = {k: v.clone() for k, v in base.network.state_dict().items()}
    result = finetune(vol, ann, base=base, config=FAST)
    np.testing.assert_array_equal(vol, phantom.volume)
    np.testing.assert_array_equal(ann, ann_copy)
    for k, v in base.network.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert result.model.network is not base.network
    assert result.steps == 3 and result.stopped == "steps"
    prov = result.model.provenance
    assert prov["fine_tuned_from"].startswith("bundled:")
    assert prov["annotated_slices"] == 2 and prov["data_shape"] == [16, 64, 64]
    assert prov["steps"] == 3 and prov["seed"] == 0
    assert set(prov["validation_jaccard"]) == {"matrix", "fibre", "pore"}
    assert result.validation == prov["validation_jaccard"]


def test_same_seed_and_steps_give_the_same_model(phantom, base) -> None:
    ann = annotate(phantom.labels, [5])
    a = finetune(phantom.volume, ann, base=base, config=FAST).model.network.state_dict()
    b = finetune(phantom.volume, ann, base=base, config=FAST).model.network.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_phase_model_never_predicts_a_third_phase(phantom, base) -> None:
    ann = annotate(phantom.labels, [4, 10])
    ann[ann == 3] = 1  # pores counted as matrix: a 2-phase problem
    result = finetune(phantom.volume, ann, base=base, config=FAST)
    assert result.model.config.n_phases == 2 and len(result.model.phases) == 2
    labels = segment_volume(phantom.volume, result.model).labels
    assert set(np.unique(labels).tolist()) <= {1, 2}


def test_cancel_returns_the_best_model_so_far(phantom, base) -> None:
    ann = annotate(phantom.labels, [3, 12])
    token = CancelToken()
    gen = iter_finetune(
        phantom.volume, ann, base=base, config=replace(FAST, steps=50), cancel=token
    )
    events = []
    try:
        while True:
            events.append(next(gen))
            if len(events) == 4:
                token.cancel()
    except StopIteration as stop:
        result = stop.value
    assert result.stopped == "cancelled" and result.steps == 4
    # validations at steps 2 and 4 (and of the start): the best of those, said consistently
    best = result.model.provenance["best_step"]
    assert result.validation is not None and best in (0, 2, 4)
    assert (result.kept == "start") == (best == 0)


def test_from_scratch_trains_a_new_model(phantom) -> None:
    ann = annotate(phantom.labels, [4, 10])
    result = finetune(
        phantom.volume, ann, base=None, config=replace(FAST, base_filters=2, mode="2.5d")
    )
    assert (
        result.model.config.in_channels == FAST.context_slices == 5
        and result.model.defaults.mode == "2.5d"
    )
    assert result.model.provenance["fine_tuned_from"] == "scratch"


def test_fine_tuning_improves_the_bundled_model_on_a_shifted_domain(base) -> None:
    d = PhantomConfig()
    cfg = replace(
        d,
        shape=(16, 64, 64),
        fibre_radius=1.5 * d.fibre_radius,
        contrast=0.5 * d.contrast,
        noise=2 * d.noise,
        ring_strength=2 * d.ring_strength,
    )
    ph = make_phantom(cfg, seed=11)
    # Inverted grey values (dark fibres, bright pores): a domain no training phantom comes near
    # (the bundled model was trained over wide ranges that include the shift above).
    ph = replace(ph, volume=255 - ph.volume)
    slices = [4, 8, 12]
    ann = annotate(ph.labels, slices)
    rest = np.ones(ph.labels.shape, bool)
    rest[slices] = False
    infer = InferenceConfig(axis="z")  # each model in its own mode (the fine-tuned one is 2.5D)
    n = 3
    before = jaccard_per_phase(
        segment_volume(ph.volume, base, infer).labels[rest], ph.labels[rest], n
    )
    result = finetune(
        ph.volume,
        ann,
        base=base,
        config=FinetuneConfig(budget=None, steps=20, crop=64, batch_size=4, validation="none"),
    )
    after = jaccard_per_phase(
        segment_volume(ph.volume, result.model, infer).labels[rest], ph.labels[rest], n
    )
    assert np.nanmean(after) > np.nanmean(before) + 0.05, (before, after)


def test_crop_shrinks_to_small_slices_and_tiny_slices_are_refused(base) -> None:
    ph = make_phantom(PhantomConfig(shape=(8, 40, 48)), seed=2)
    ann = annotate(ph.labels, [3])
    plan = plan_finetune(ann.shape, ann, base=base)
    assert plan.crop == 48 and any("crops of 48" in n for n in plan.notes)
    result = finetune(ph.volume, ann, base=base, config=replace(FAST, crop=128))
    assert result.steps == 3
    with pytest.raises(ValueError, match="at least 16x16"):
        plan_finetune(ann.shape, annotate(ph.labels, [5], axis=1), base=base)


def test_a_2p5d_base_model_is_fine_tuned_as_it_is(phantom, base) -> None:
    wide = finetune(phantom.volume, annotate(phantom.labels, [4, 10]), base=base, config=FAST).model
    assert wide.config.in_channels == 5 and wide.defaults.mode == "2.5d"
    ann = annotate(phantom.labels, [3, 12])
    plan = plan_finetune(ann.shape, ann, base=wide)
    assert not any("extended" in n for n in plan.notes)
    again = finetune(phantom.volume, ann, base=wide, config=FAST).model
    assert again.config == wide.config and again.defaults.mode == "2.5d"
    with pytest.raises(ValueError, match=r"runs in mode '2.5d'.*cannot be fine-tuned in mode '2d'"):
        plan_finetune(ann.shape, ann, base=wide, config=FinetuneConfig(mode="2d"))


def test_a_2d_base_model_can_be_fine_tuned_as_2p5d(phantom, base) -> None:
    ann = annotate(phantom.labels, [4, 10])
    plan = plan_finetune(ann.shape, ann, base=base, config=FinetuneConfig(mode="2.5d"))
    assert any("extended to 2.5D" in n for n in plan.notes)
    result = finetune(phantom.volume, ann, base=base, config=replace(FAST, mode="2.5d"))
    model = result.model
    assert model.config.in_channels == 5 and model.defaults.mode == "2.5d"
    assert base.config.in_channels == 1 and base.defaults.mode == "2d"
    # the default (mode None) extends a 2D base too; "2d" keeps it 2D; 3 context slices on request
    plain = finetune(phantom.volume, ann, base=base, config=replace(FAST, mode="2d"))
    assert plain.model.config.in_channels == 1 and plain.model.defaults.mode == "2d"
    three = finetune(phantom.volume, ann, base=base, config=replace(FAST, context_slices=3))
    assert three.model.config.in_channels == 3 and three.model.defaults.mode == "2.5d"
    with pytest.raises(ValueError, match="odd and >= 3"):
        FinetuneConfig(context_slices=4)
    labels = segment_volume(phantom.volume, model).labels
    assert labels.shape == phantom.labels.shape and set(np.unique(labels)) <= {1, 2, 3}


# --- never worse than the start; continuing a fine-tuned model; held-out voxels ------------------


def test_steps_that_only_hurt_return_the_starting_model_unchanged(phantom, base) -> None:
    ann = annotate(phantom.labels, [3, 12])
    # A learning rate far too high: every step wrecks the network.
    config = replace(FAST, steps=4, learning_rate=50.0, validate_every=1)
    result = finetune(phantom.volume, ann, base=base, config=config)
    assert result.kept == "start" and result.model.provenance["kept"] == "start"
    assert result.model.provenance["best_step"] == 0
    assert result.start_validation is not None
    assert result.validation == pytest.approx(result.start_validation)
    assert any("training did not beat the starting model" in n for n in result.notes)
    # The returned model predicts what the base predicts (up to float rounding of the folded norms).
    infer = InferenceConfig(axis="z", mode="2d")
    wide = segment_volume(phantom.volume, result.model, InferenceConfig(axis="z")).labels
    same = segment_volume(phantom.volume, base, infer).labels
    assert (wide == same).mean() > 0.999


def test_start_and_fine_tuned_scores_are_recorded_side_by_side(phantom, base) -> None:
    ann = annotate(phantom.labels, [3, 12])
    result = finetune(phantom.volume, ann, base=base, config=replace(FAST, steps=6))
    prov = result.model.provenance
    assert set(prov["start_validation_jaccard"]) == {"matrix", "fibre", "pore"}
    assert prov["kept"] in ("start", "fine-tuned")
    mean = lambda d: np.nanmean(list(d.values()))  # noqa: E731
    assert mean(prov["validation_jaccard"]) >= mean(prov["start_validation_jaccard"])


def test_a_new_output_layer_is_not_scored_before_training(phantom, base) -> None:
    ann = annotate(phantom.labels, [4, 10])
    ann[ann == 3] = 1
    result = finetune(phantom.volume, ann, base=base, config=FAST)
    assert result.start_validation is None and result.kept == "fine-tuned"


def test_continuing_a_fine_tuned_model_keeps_phases_head_and_mode(phantom, base) -> None:
    first = finetune(phantom.volume, annotate(phantom.labels, [8]), base=base, config=FAST).model
    assert first.defaults.mode == "2.5d"
    more = annotate(phantom.labels, [3, 8])  # the annotations accumulate
    plan = plan_finetune(more.shape, more, base=first)
    assert not plan.replace_head and plan.phases == first.phases
    second = finetune(phantom.volume, more, base=first, config=FAST)
    model = second.model
    assert model.config == first.config and model.defaults.mode == "2.5d"
    assert model.phases == first.phases
    assert second.start_validation is not None  # the continued model competes with its steps
    assert model.provenance["base_provenance"]["steps"] == first.provenance["steps"]


def test_held_out_band_voxels_are_recorded_exactly(phantom, base) -> None:
    ann = annotate(phantom.labels, [3, 9, 12])
    ann[9, :, :20] = 0  # a partly annotated slice: its band sits elsewhere
    result = finetune(phantom.volume, ann, base=base, config=FAST)
    record = result.model.provenance["held_out"]
    assert record["kind"] == "band" and record["axis"] == "z" and record["slices"] == [3, 9, 12]
    mask = held_out_mask(record, ann.shape)
    for i in (3, 9, 12):
        np.testing.assert_array_equal(mask[i], band_mask(ann[i]))
    assert not mask[[0, 1, 2, 4, 5]].any()
    with pytest.raises(ValueError, match="not the volume the model was fine-tuned on"):
        held_out_mask(record, (8, 64, 64))


def test_held_out_slices_are_recorded(phantom, base) -> None:
    ann = annotate(phantom.labels, [1, 3, 5, 7, 9, 11])
    result = finetune(phantom.volume, ann, base=base, config=FAST)
    record = result.held_out
    assert record == result.model.provenance["held_out"]
    assert record["kind"] == "slices" and record["slices"] == list(result.plan.validation_slices)
    mask = held_out_mask(record, ann.shape)
    assert mask[record["slices"]].all() and mask.sum() == len(record["slices"]) * 64 * 64


def test_a_budget_shorter_than_one_step_makes_one_step_with_a_note(phantom, base) -> None:
    ann = annotate(phantom.labels, [3, 12])
    result = finetune(phantom.volume, ann, base=base, config=replace(FAST, steps=None, budget=1e-3))
    assert result.steps == 1 and result.stopped == "budget"
    assert any("shorter than one training step" in n for n in result.notes)


def test_phases_with_too_few_held_out_voxels_do_not_decide_which_model_is_kept(
    phantom, base
) -> None:
    ann = annotate(phantom.labels, [8])  # one 64x64 slice: a band of a few hundred voxels
    plan = plan_finetune(ann.shape, ann, base=base)
    band = band_mask(ann[8]) & (ann[8] > 0)
    held = np.bincount(ann[8][band], minlength=4)[1:]
    assert plan.validation == "band" and (held < MIN_RANKING_VOXELS).any()
    result = finetune(phantom.volume, ann, base=base, config=FAST)
    few = [n for n, c in zip(base.phases.names, held, strict=True) if 0 < c < MIN_RANKING_VOXELS]
    assert any(
        "too few held-out voxels" in note and all(name in note for name in few)
        for note in result.notes
    )


def test_sparse_strokes_get_the_slices_phase_shares_whole_slices_their_own(phantom, base) -> None:
    from napari_tomoseg.core.learn.finetune import _Guesses, _sparse, _training_data

    z = 8
    truth = phantom.labels[z]
    low, high = base.normalization.volume_range(phantom.volume)
    whole = annotate(phantom.labels, [z])
    assert not _sparse(whole, plan_finetune(whole.shape, whole, base=base))

    strokes = np.zeros_like(phantom.labels)
    strokes[z] = stroke_annotations(truth, fraction=0.1, seed=0)
    plan = plan_finetune(strokes.shape, strokes, base=base)
    assert _sparse(strokes, plan) and plan.validation == "band"
    guesses = _Guesses(base.network, 3, "cpu")
    volumes, _ = _training_data(phantom.volume, strokes, plan, 1, low, high, guess=guesses)
    labels = volumes[0].labels[0]
    guided = labels > 3
    band = band_mask(strokes[z])
    # guesses fill only voxels nobody annotated, never the held-out band; strokes stay as painted
    assert guided.any() and not (guided & (strokes[z] > 0)).any() and not (guided & band).any()
    assert np.array_equal(labels[~guided & ~band], strokes[z][~guided & ~band])
    # confident guesses of the bundled model on its own domain are nearly all right
    assert (labels[guided] - 3 == truth[guided]).mean() > 0.95

    prior = guesses.shares()
    true = np.bincount(truth.ravel(), minlength=4)[1:] / truth.size
    painted = np.bincount(strokes[z].ravel(), minlength=4)[1:] / (strokes[z] > 0).sum()
    assert abs(sum(prior) - 1) < 1e-9
    # the estimate is much nearer the slice's shares than the strokes' own shares are
    assert np.abs(np.array(prior) - true).sum() < 0.5 * np.abs(painted - true).sum()


def test_strokes_fine_tune_with_and_without_guesses(phantom, base) -> None:
    ann = np.zeros_like(phantom.labels)
    for z in (4, 11):
        ann[z] = stroke_annotations(phantom.labels[z], fraction=0.1, seed=z)
    last = replace(FAST, validation="none")  # the trained weights, never the start
    guided = finetune(phantom.volume, ann, base=base, config=last)
    plain = finetune(phantom.volume, ann, base=base, config=replace(last, guide=0.0))
    assert guided.steps == plain.steps == 3
    moved = [
        not torch.equal(a, b)
        for a, b in zip(
            guided.model.network.state_dict().values(),
            plain.model.network.state_dict().values(),
            strict=True,
        )
    ]
    assert any(moved)  # the guesses changed what was learnt
    with pytest.raises(ValueError, match="guide"):
        FinetuneConfig(guide=-1.0)


def test_strokes_that_miss_a_phase_report_it_as_not_learnt(phantom, base) -> None:
    ann = np.zeros(phantom.labels.shape, np.uint8)
    strokes = stroke_annotations(phantom.labels[8], fraction=0.1, seed=0)
    ann[8] = np.where(strokes == 3, 0, strokes)  # no stroke through a pore
    plan = plan_finetune(ann.shape, ann, base=base, phases=base.phases)
    assert plan.phases is base.phases and not plan.replace_head
    assert any("['pore']" in n and "not learnt" in n for n in plan.notes), plan.notes


def test_a_3d_model_is_trained_from_scratch_on_annotated_slices(phantom) -> None:
    ann = annotate(phantom.labels, [4, 11])
    config = FinetuneConfig(budget=None, steps=2, crop=16, batch_size=2, mode="3d")
    result = finetune(phantom.volume, ann, base=None, config=config)
    assert result.steps == 2 and result.model.config.ndim == 3
    assert result.model.defaults.mode == "3d" and result.validation is None


def test_guesses_a_stroke_corrects_are_dropped_around_it_and_kept_elsewhere() -> None:
    from napari_tomoseg.core.learn.finetune import GUIDE_RADIUS, _uncontradicted

    guessed = np.full((40, 40), 1, np.uint8)  # the model calls everything phase 1 ...
    guessed[:, 30:] = 2  # ... and the right edge phase 2
    labels = np.zeros_like(guessed)
    labels[20, 5:8] = 3  # a stroke says phase 3 where the model guessed 1: a correction
    labels[5, 32:35] = 2  # a stroke agreeing with the model
    kept = _uncontradicted(guessed, labels)
    yy, xx = np.mgrid[:40, :40]
    near = np.hypot(yy - 20, np.clip(xx, 5, 7) - xx) <= GUIDE_RADIUS
    assert (kept[near & (guessed == 1)] == 0).all()  # phase-1 guesses around the correction: gone
    assert (
        kept[~near] == guessed[~near]
    ).all()  # everything else, agreeing strokes' surroundings too
