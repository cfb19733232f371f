import numpy as np
import pytest
import torch

from napari_tomoseg.core.learn.train import (
    AnnotatedVolume,
    CropSampler,
    TrainConfig,
    fit,
    iter_train,
)
from napari_tomoseg.core.measure.metrics import jaccard_per_phase
from napari_tomoseg.core.model import ModularUNet, UNetConfig
from napari_tomoseg.core.progress import CancelToken


def _toy(seed=0, shape=(8, 32, 32)):
    """Bright squares (phase 2) and dark dots (phase 3) on a mid-grey matrix, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.ones(shape, np.uint8)
    for _ in range(6):
        z, y, x = (
            rng.integers(0, shape[0]),
            rng.integers(0, shape[1] - 8),
            rng.integers(0, shape[2] - 8),
        )
        labels[max(0, z - 2) : z + 2, y : y + 8, x : x + 8] = 2
    for _ in range(6):
        z, y, x = (rng.integers(0, s) for s in shape)
        labels[z, max(0, y - 1) : y + 2, max(0, x - 1) : x + 2] = 3
    image = np.choose(labels - 1, [0.5, 0.8, 0.1]).astype(np.float32) + rng.normal(
        0, 0.05, shape
    ).astype(np.float32)
    return AnnotatedVolume(image, labels)


def test_sampler_crops_only_where_annotated_and_oversamples_rare():
    vol = _toy()
    sparse = np.zeros_like(vol.labels)
    sparse[3] = vol.labels[3]  # one annotated slice
    sampler = CropSampler(
        [AnnotatedVolume(vol.image, sparse)],
        n_phases=3,
        crop=16,
        axes=(0,),
        rare_fraction=1.0,
        seed=0,
    )
    x, y = sampler.sample(64)
    assert x.shape == (64, 1, 16, 16) and y.shape == (64, 16, 16)
    assert (y > 0).any(dim=(1, 2)).all()  # every crop holds annotations
    with_pore = (y == 3).any(dim=(1, 2)).float().mean().item()
    plain = CropSampler(
        [AnnotatedVolume(vol.image, sparse)],
        n_phases=3,
        crop=16,
        axes=(0,),
        rare_fraction=0.0,
        seed=0,
    )
    _, y0 = plain.sample(64)
    assert with_pore > 1.5 * (y0 == 3).any(dim=(1, 2)).float().mean().item()


def test_sampler_25d_and_3d_and_padding():
    vol = _toy(shape=(6, 12, 20))
    x, y = CropSampler([vol], n_phases=3, in_channels=5, crop=16, seed=0).sample(4)
    assert x.shape == (4, 5, 16, 16)
    assert (y == 0).any()  # the 12-voxel side was padded with unannotated voxels
    x, y = CropSampler([vol], n_phases=3, ndim=3, crop=8, seed=0).sample(2)
    assert x.shape == (2, 1, 8, 8, 8) and y.shape == (2, 8, 8, 8)


def test_sampler_errors():
    vol = _toy()
    with pytest.raises(ValueError, match="no annotated voxel"):
        CropSampler([AnnotatedVolume(vol.image, np.zeros_like(vol.labels))], n_phases=3)
    with pytest.raises(ValueError, match="phase id 3"):
        CropSampler([vol], n_phases=2)
    with pytest.raises(ValueError, match="shape"):
        AnnotatedVolume(vol.image, vol.labels[:2])


def test_training_improves_a_model_and_keeps_the_best():
    train, val = _toy(0), _toy(1)
    torch.manual_seed(0)
    net = ModularUNet(UNetConfig(base_filters=4))

    def validate(network):
        with torch.no_grad():
            logits = network(torch.from_numpy(val.image[:, None]))
        return jaccard_per_phase(logits.argmax(1).numpy() + 1, val.labels, 3)

    before = np.nanmean(validate(net.eval()))
    sampler = CropSampler([train], n_phases=3, crop=32, axes=(0,), seed=0)
    result = fit(
        net,
        sampler,
        TrainConfig(
            crop=32, batch_size=4, steps=150, validate_every=30, warmup=5, learning_rate=5e-3
        ),
        validate=validate,
    )
    after = np.nanmean(validate(net.eval()))
    assert after > before + 0.2
    assert after > 0.8
    assert result.steps == 150 and result.stopped == "steps"
    assert np.nanmean(result.best_validation) == pytest.approx(after)
    assert result.history[-1].eta == pytest.approx(0.0)


def test_step_budget_is_bitwise_reproducible():
    def run():
        torch.manual_seed(123)
        net = ModularUNet(UNetConfig(base_filters=2))
        sampler = CropSampler([_toy()], n_phases=3, crop=16, seed=5)
        fit(net, sampler, TrainConfig(crop=16, batch_size=2, steps=5, seed=5))
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    assert torch.equal(run(), run())


def test_cancel_stops_and_returns_weights():
    net = ModularUNet(UNetConfig(base_filters=2))
    token = CancelToken()
    gen = iter_train(
        net,
        CropSampler([_toy()], n_phases=3, crop=16),
        TrainConfig(crop=16, batch_size=2, steps=1000),
        cancel=token,
    )
    next(gen)
    token.cancel()
    with pytest.raises(StopIteration) as stop:
        next(gen)
    assert stop.value.value.stopped == "cancelled" and stop.value.value.steps == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "steps or budget"),
        ({"steps": 0}, "steps"),
        ({"budget": 0}, "budget"),
        ({"steps": 1, "crop": 12}, "crop"),
        ({"steps": 1, "validation_share": 0}, "validation_share"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_validations_spread_over_the_run_not_every_n_steps():
    net = ModularUNet(UNetConfig(base_filters=2))
    calls = []

    def validate(network):
        calls.append(1)
        return [0.5, 0.5, 0.5]

    result = fit(
        net,
        CropSampler([_toy()], n_phases=3, crop=16, seed=0),
        TrainConfig(crop=16, batch_size=2, steps=20, validate_every=None, validations=4),
        validate=validate,
    )
    validated = [e.step for e in result.history if e.validation is not None]
    assert validated == [5, 10, 15, 20] and len(calls) == 4


@pytest.mark.parametrize(("share", "most", "least"), [(0.1, 3, 1), (1.0, 99, 5)])
def test_validations_of_a_timed_run_take_at_most_their_share(share, most, least):
    """A slow validation is skipped when the validations so far took over ``validation_share``."""
    import time

    net = ModularUNet(UNetConfig(base_filters=2))

    def validate(network):
        time.sleep(0.2)
        return [0.5, 0.5, 0.5]

    result = fit(
        net,
        CropSampler([_toy()], n_phases=3, crop=16, seed=0),
        TrainConfig(crop=16, batch_size=2, budget=2.5, validate_every=None, validation_share=share),
        validate=validate,
    )
    validated = [e.step for e in result.history if e.validation is not None]
    assert least <= len(validated) <= most
    assert validated[-1] == result.steps  # the closing validation always runs


def test_optimiser_imports_are_preloaded_in_the_background():
    import sys

    from napari_tomoseg.core.learn.train import preload_optimiser

    thread = preload_optimiser()
    if thread is not None:
        thread.join(timeout=60)
    assert "torch._dynamo" in sys.modules
    assert preload_optimiser() is None  # nothing left to load
