"""Test-time augmentation: probabilities averaged over the symmetries of a tile, inside the predictor."""

from __future__ import annotations

import itertools
import json
import pickle
from collections.abc import Callable

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from napari_tomoseg.core.learn.augment import apply_dihedral, dihedral_transforms
from napari_tomoseg.core.model import (
    InferenceDefaults,
    ModelFileError,
    ModularUNet,
    TomosegModel,
    UNetConfig,
    load_model,
    save_model,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES
from napari_tomoseg.core.segment import (
    InferenceConfig,
    Predictor,
    Segmenter,
    TestTimeAugmented,
    apply_symmetry,
    invert_symmetry,
    resolve_tta,
    tta_symmetries,
)
from napari_tomoseg.core.segment.tiling import PlaneGrid

Predict = Callable[[np.ndarray], np.ndarray]


def _model(mode: str = "2d", ndim: int = 2, in_channels: int = 1, tta: bool = False):
    torch.manual_seed(0)
    net = ModularUNet(UNetConfig(ndim=ndim, in_channels=in_channels, base_filters=2))
    defaults = InferenceDefaults(mode=mode, tile=32, overlap=8, tta=tta)
    return TomosegModel(net, COMPOSITE_PHASES, defaults=defaults)


def _conv_stack(ndim: int, in_channels: int = 1, *, symmetric: bool = False) -> Predict:
    """A fixed random conv stack (receptive radius 3) as a predictor; ``symmetric``: every kernel
    averaged over the symmetries, which makes the network itself equivariant under them."""
    torch.manual_seed(1)
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    net = nn.Sequential(
        conv(in_channels, 6, 3, padding=1),
        nn.Tanh(),
        conv(6, 6, 3, padding=1),
        nn.Tanh(),
        conv(6, 3, 3, padding=1),
    ).eval()
    if symmetric:
        with torch.no_grad():
            for layer in net:
                if isinstance(layer, conv):
                    w = layer.weight
                    sym = tta_symmetries(ndim)
                    w.copy_(sum(apply_symmetry(w, s) for s in sym) / len(sym))

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(torch.from_numpy(batch)), 1).numpy()

    return predict


def _inverse(perm: tuple[int, ...], flips: tuple[bool, ...]) -> tuple:
    """The element of ``dihedral_transforms`` undoing ``(perm, flips)``, found by trying them all
    on an array of distinct values (independent of the code under test)."""
    nd = len(perm)
    probe = np.arange(4**nd).reshape((4,) * nd)
    moved = apply_dihedral(probe, perm, flips)
    for other in dihedral_transforms(nd):
        if np.array_equal(apply_dihedral(moved, *other), probe):
            return other
    raise AssertionError("no inverse")


def _manual_tta(predict: Predict, batch: np.ndarray, symmetries) -> np.ndarray:
    """The mean over ``symmetries`` of the back-transformed predictions, with augment.py's numpy
    functions."""
    total = 0.0
    for perm, flips in symmetries:
        moved = np.ascontiguousarray(apply_dihedral(batch, perm, flips))
        total = total + apply_dihedral(predict(moved), *_inverse(perm, flips))
    return (total / len(symmetries)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# the symmetries


def test_symmetries_are_augments_and_form_a_group():
    assert set(tta_symmetries(2)) == set(dihedral_transforms(2))
    three = tta_symmetries(3)
    assert len(three) == 8 and set(three) <= set(dihedral_transforms(3))
    assert all(perm == (0, 1, 2) for perm, _ in three)
    for nd in (2, 3):
        sym = tta_symmetries(nd)
        assert sym[0] == (tuple(range(nd)), (False,) * nd), "identity first"
        probe = np.arange(4**nd).reshape((4,) * nd)
        images = {apply_dihedral(probe, *s).tobytes() for s in sym}
        for a, b in itertools.product(sym, repeat=2):
            composed = apply_dihedral(apply_dihedral(probe, *a), *b)
            assert composed.tobytes() in images, "closed under composition"
    with pytest.raises(ValueError, match="2D or 3D"):
        tta_symmetries(4)


@pytest.mark.parametrize("nd", [2, 3])
def test_torch_symmetries_follow_augment_and_invert(nd):
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, *range(4, 4 + nd))).astype(np.float32)  # non-cubic: axes tell apart
    for s in dihedral_transforms(nd):
        moved = apply_symmetry(torch.from_numpy(x), s)
        np.testing.assert_array_equal(moved.numpy(), apply_dihedral(x, *s))
        np.testing.assert_array_equal(invert_symmetry(moved, s).numpy(), x)


# ---------------------------------------------------------------------------------------------
# the averaging, for any callable and inside the Predictor


@pytest.mark.parametrize(("nd", "channels"), [(2, 1), (2, 3), (3, 1)])
def test_tta_is_the_mean_of_the_transformed_predictions(nd, channels):
    predict = _conv_stack(nd, channels)
    rng = np.random.default_rng(2)
    batch = rng.random((2, channels, *(16,) * nd)).astype(np.float32)
    got = TestTimeAugmented(predict)(batch)
    want = _manual_tta(predict, batch, tta_symmetries(nd))
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - predict(batch)).max() > 1e-3, "a generic network is not equivariant"


@pytest.mark.parametrize(("mode", "nd", "channels"), [("2d", 2, 1), ("2.5d", 2, 3), ("3d", 3, 1)])
def test_predictor_tta_on_the_device_matches_the_manual_mean(mode, nd, channels):
    model = _model(mode, nd, channels)
    plain = Predictor(model, device="cpu", precision="fp32")
    tta = Predictor(model, device="cpu", precision="fp32", tta=True)
    rng = np.random.default_rng(3)
    batch = rng.random((2, channels, *(16,) * nd)).astype(np.float32)
    got = tta(batch)
    # 2.5D: the context slices are channels, transformed in-plane like the centre slice.
    np.testing.assert_allclose(got, _manual_tta(plain, batch, tta_symmetries(nd)), atol=1e-5)
    core = (slice(4, 12),) * nd
    labels, probs = tta.predict_core(batch, core, probabilities=True)
    assert probs is not None
    np.testing.assert_allclose(probs, got[(slice(None), slice(None), *core)], atol=1e-6)
    np.testing.assert_array_equal(labels, probs.argmax(1))


@pytest.mark.parametrize("nd", [2, 3])
def test_tta_output_is_exactly_equivariant(nd):
    """Whatever the network, the averaged prediction of a transformed tile is the transformed
    averaged prediction (the symmetries form a group)."""
    model = _model("3d" if nd == 3 else "2d", nd)
    tta = Predictor(model, device="cpu", precision="fp32", tta=True)
    rng = np.random.default_rng(4)
    batch = rng.random((1, 1, *(16,) * nd)).astype(np.float32)
    base = tta(batch)
    for s in tta_symmetries(nd):
        moved = np.ascontiguousarray(apply_dihedral(batch, *s))
        np.testing.assert_allclose(tta(moved), apply_dihedral(base, *s), atol=1e-5)


def test_symmetric_input():
    """A symmetric input: TTA is the symmetrised plain prediction; with an equivariant network
    (symmetric kernels) that is the plain prediction itself, for any input."""
    rng = np.random.default_rng(5)
    x = rng.random((1, 1, 20, 20)).astype(np.float32)
    sym = tta_symmetries(2)
    x_sym = np.ascontiguousarray(sum(apply_dihedral(x, *s) for s in sym) / len(sym))
    generic = _conv_stack(2)
    plain = generic(x_sym)
    symmetrised = sum(apply_dihedral(plain, *_inverse(*s)) for s in sym) / len(sym)
    np.testing.assert_allclose(TestTimeAugmented(generic)(x_sym), symmetrised, atol=1e-6)
    equivariant = _conv_stack(2, symmetric=True)
    for image in (x_sym, x):
        np.testing.assert_allclose(
            TestTimeAugmented(equivariant)(image), equivariant(image), atol=1e-6
        )


# ---------------------------------------------------------------------------------------------
# through the pipeline


def _segment(model, predictor, volume, **config):
    seg = Segmenter(model, InferenceConfig(batch_size=4, **config), predictor=predictor)
    plan = seg.plan(volume, probabilities=True)
    probs = np.zeros((3, *volume.shape), np.float32)
    result = plan.segment(probabilities_out=probs)
    return np.asarray(result.labels), probs, plan


@pytest.mark.parametrize("mode", ["2d", "2.5d"])
def test_tiled_tta_equals_untiled_tta(mode):
    """Valid-region stitching with a halo wider than the conv stack's receptive radius: each tile's
    core sees what the whole slice would, under every symmetry."""
    k = 3 if mode == "2.5d" else 1
    model = _model(mode, 2, k)
    predict = _conv_stack(2, k)
    rng = np.random.default_rng(6)
    volume = rng.integers(0, 255, (3, 40, 48)).astype(np.uint8)
    tiled_l, tiled_p, plan = _segment(model, predict, volume, tta=True, tile=16, overlap=8)
    assert plan.settings.tta and isinstance(plan.segmenter.predictor, TestTimeAugmented)
    assert len(PlaneGrid.of((40, 48), 16, 8, 8).starts[0]) == 3, "tiled"
    whole_l, whole_p, _ = _segment(model, predict, volume, tta=True, tile=64, overlap=16)
    np.testing.assert_allclose(tiled_p, whole_p, atol=5e-4)  # stored as float16
    np.testing.assert_array_equal(tiled_l, whole_l)
    _, plain_p, _ = _segment(model, predict, volume, tta=False, tile=64, overlap=16)
    assert np.abs(plain_p - whole_p).max() > 1e-3, "TTA changed nothing: it did not run"


def test_pipeline_tta_with_the_real_predictor():
    model = _model("2d", 2)
    rng = np.random.default_rng(7)
    volume = rng.integers(0, 255, (2, 40, 40)).astype(np.uint8)
    fp32 = {"device": "cpu", "precision": "fp32", "tile": 24, "overlap": 8}
    labels, probs, plan = _segment(model, None, volume, tta=True, **fp32)
    assert isinstance(plan.segmenter.predictor, Predictor) and plan.segmenter.predictor.tta
    plain = Predictor(model, device="cpu", precision="fp32")

    def manual(batch: np.ndarray) -> np.ndarray:
        return _manual_tta(plain, batch, tta_symmetries(2))

    want_l, want_p, _ = _segment(model, manual, volume, tta=False, **fp32)
    np.testing.assert_allclose(probs, want_p, atol=5e-4)  # stored as float16
    np.testing.assert_array_equal(labels, want_l)


# ---------------------------------------------------------------------------------------------
# configuration and model files


def test_config_and_model_default():
    with pytest.raises(ValueError, match="tta"):
        InferenceConfig(tta="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tta"):
        InferenceDefaults(tta=1)  # type: ignore[arg-type]
    off, on = _model(), _model(tta=True)
    assert not resolve_tta(InferenceConfig(), off) and resolve_tta(InferenceConfig(), on)
    assert not resolve_tta(InferenceConfig(tta=False), on)
    assert resolve_tta(InferenceConfig(tta=True), off)
    seg = Segmenter(on, InferenceConfig(device="cpu"))
    assert seg.tta and seg.predictor.tta  # type: ignore[attr-defined]
    other = seg.with_options(tta=False)
    assert not other.predictor.tta  # type: ignore[attr-defined]
    assert other.predictor.network is seg.predictor.network  # type: ignore[attr-defined]
    # A dask worker rebuilds the Segmenter from (model, config): TTA travels with them.
    assert pickle.loads(pickle.dumps(seg)).predictor.tta
    custom = _conv_stack(2)
    wrapped = Segmenter(off, InferenceConfig(tta=True), predictor=custom)
    assert isinstance(wrapped.predictor, TestTimeAugmented)
    again = wrapped.with_options(axis="y")
    assert isinstance(again.predictor, TestTimeAugmented) and again.predictor.predict is custom
    assert wrapped.with_options(tta=False).predictor is custom


def test_model_files_record_tta_and_old_files_load_without_it(tmp_path):
    on = save_model(tmp_path / "on.safetensors", _model(tta=True))
    assert load_model(on).defaults.tta
    off = save_model(tmp_path / "off.safetensors", _model())
    with safe_open(str(off), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    # Written only when on: files without TTA stay readable by versions that predate it.
    assert "tta" not in json.loads(meta["inference"])
    assert not load_model(off).defaults.tta
    bad = dict(meta, inference=json.dumps({**json.loads(meta["inference"]), "tta": "yes"}))
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=bad)
    with pytest.raises(ModelFileError, match="tta"):
        load_model(tmp_path / "bad.safetensors")
