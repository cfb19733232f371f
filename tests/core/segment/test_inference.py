"""Tiled inference: exact stitching with identity-like predictors, modes, devices, bad input."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_tomoseg.core.model import InferenceDefaults, ModularUNet, TomosegModel, UNetConfig
from napari_tomoseg.core.phases import COMPOSITE_PHASES
from napari_tomoseg.core.progress import Cancelled, CancelToken, run_to_completion
from napari_tomoseg.core.segment import (
    InferenceConfig,
    Predictor,
    fold_batch_norm,
    iter_segment,
    parse_memory,
    plan_memory,
    predict_tiled,
    resolve,
    resolve_device,
    run_halving,
    segment_volume,
    tile_starts,
)


def _model(mode="2d", ndim=2, in_channels=1, tile=32, overlap=8) -> TomosegModel:
    torch.manual_seed(0)
    net = ModularUNet(UNetConfig(ndim=ndim, in_channels=in_channels, base_filters=2))
    return TomosegModel(
        net, COMPOSITE_PHASES, defaults=InferenceDefaults(mode=mode, tile=tile, overlap=overlap)
    )


def one_hot_of_channel(channel: int | None = None):
    """An identity-like predictor: the (rounded) input value v in 1..3 becomes one-hot phase v."""

    def predict(batch: np.ndarray) -> np.ndarray:
        c = batch.shape[1] // 2 if channel is None else channel
        v = np.rint(batch[:, c]).astype(int) - 1
        return np.moveaxis(np.eye(3, dtype=np.float32)[v], -1, 1)

    return predict


def test_tile_starts_cover_with_overlap():
    for length, tile, overlap in [
        (100, 32, 8),
        (33, 32, 4),
        (32, 32, 8),
        (1000, 512, 32),
        (65, 16, 0),
    ]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + min(tile, length) == max(
            length, starts[-1] + min(tile, length)
        )
        covered = np.zeros(max(length, tile), bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered[:length].all()
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 70), st.integers(1, 70)),
    tile=st.sampled_from([8, 16, 24, 32]),
    overlap=st.integers(0, 12),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_predict_tiled_reproduces_input(shape, tile, overlap, batch, seed):
    overlap = min(overlap, tile // 2)
    images = np.random.default_rng(seed).random((shape[0], 1, *shape[1:]), dtype=np.float32)
    out = predict_tiled(
        images, lambda b: b * 1.0, n_out=1, tile=tile, overlap=overlap, batch_size=batch
    )
    assert out.shape == images.shape
    np.testing.assert_allclose(out, images, rtol=0, atol=2e-6)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 40), st.integers(1, 40)),
    mode_axis=st.sampled_from(
        [
            ("2d", "z"),
            ("2d", "y"),
            ("2d", "x"),
            ("2.5d", "z"),
            ("2.5d", "x"),
            ("2d-3axes", "z"),
            ("2d-3axes-2.5d", "z"),
            ("3d", "z"),
        ]
    ),
    tile=st.sampled_from([8, 16, 24]),
    overlap=st.integers(0, 8),
    block=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_segment_identity_predictor_is_exact(shape, mode_axis, tile, overlap, block, seed):
    mode, axis = mode_axis
    ndim, cin = (3, 1) if mode == "3d" else (2, 3 if "2.5d" in mode else 1)
    mode = mode.removesuffix("-2.5d")  # the multi-axis mode with a 2.5D network
    model = _model(mode, ndim, cin)
    volume = np.random.default_rng(seed).integers(1, 4, shape).astype(np.uint8)
    probs = np.zeros((3, *shape), np.float16)
    cfg = InferenceConfig(axis=axis, tile=tile, overlap=min(overlap, tile // 2), block=block)
    gen = iter_segment(
        volume,
        one_hot_of_channel(),
        cfg,
        model=model,
        grey_range=(0.0, 1.0),
        probabilities_out=probs,
    )
    result = run_to_completion(gen)
    np.testing.assert_array_equal(result.labels, volume)
    np.testing.assert_array_equal(probs.argmax(0) + 1, volume)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=2e-3)


def test_25d_channels_are_neighbouring_slices_in_order():
    model = _model("2.5d", 2, 3)
    rng = np.random.default_rng(1)
    volume = rng.integers(1, 4, (6, 9, 9)).astype(np.uint8)
    for axis, ax in (("z", 0), ("y", 1)):
        cfg = InferenceConfig(axis=axis, tile=16, overlap=4, block=4)
        # channel 0 is the previous slice: the output is the volume shifted by one slice,
        # with the mirror image of slice 1 before slice 0.
        res = run_to_completion(
            iter_segment(volume, one_hot_of_channel(0), cfg, model=model, grey_range=(0, 1))
        )
        expected = np.concatenate(
            [np.take(volume, [1], ax), np.take(volume, range(0, volume.shape[ax] - 1), ax)], ax
        )
        np.testing.assert_array_equal(res.labels, expected)


def test_tiling_barely_changes_a_real_network():
    model = _model(tile=32, overlap=16)
    volume = np.random.default_rng(2).integers(0, 255, (2, 96, 80)).astype(np.uint8)
    whole = segment_volume(volume, model, InferenceConfig(tile=128, overlap=0, device="cpu")).labels
    tiled = segment_volume(volume, model, InferenceConfig(tile=32, overlap=16, device="cpu")).labels
    assert (whole == tiled).mean() > 0.97


def test_folded_batch_norm_matches_eval_network():
    net = ModularUNet(UNetConfig(base_filters=4))
    # non-trivial running statistics
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(2, 1, 32, 32) * 3 + 1)
    net.eval()
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(fold_batch_norm(net)(x), net(x), atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batch_norm(net).modules())


def test_mask_sets_outside_to_zero():
    model = _model()
    volume = np.random.default_rng(3).integers(1, 4, (3, 20, 20)).astype(np.uint8)
    mask = np.zeros(volume.shape, bool)
    mask[:, 5:15, 5:15] = True
    cfg = InferenceConfig(tile=16, overlap=4)
    res = run_to_completion(
        iter_segment(volume, one_hot_of_channel(), cfg, model=model, grey_range=(0, 1), mask=mask)
    )
    np.testing.assert_array_equal(res.labels[mask], volume[mask])
    assert (res.labels[~mask] == 0).all()


def test_progress_events_and_cancel():
    model = _model()
    volume = np.random.default_rng(4).integers(0, 255, (10, 24, 24)).astype(np.uint8)
    gen = iter_segment(
        volume,
        one_hot_of_channel(),
        InferenceConfig(tile=16, block=3),
        model=model,
        grey_range=(0, 255),
    )
    events = []
    run_to_completion(gen, events.append)
    assert [e.done for e in events] == [3 * 576, 6 * 576, 9 * 576, 10 * 576]
    assert events[-1].fraction == 1.0
    token = CancelToken()
    gen = iter_segment(
        volume,
        one_hot_of_channel(),
        InferenceConfig(tile=16, block=3),
        model=model,
        grey_range=(0, 255),
        cancel=token,
    )
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)


def test_normalisation_is_per_volume_not_per_block():
    """Two blocks with very different histograms get the same grey->value mapping (no seams)."""
    model = _model()
    volume = np.zeros((4, 16, 16), np.uint16)
    volume[:2] = 1000
    volume[2:] = 3000
    volume[:, 0, 0] = 0
    seen = []

    def record(batch):
        seen.append(float(batch.max()))
        return np.zeros((batch.shape[0], 3, *batch.shape[2:]), np.float32) + 1 / 3

    run_to_completion(
        iter_segment(volume, record, InferenceConfig(tile=16, overlap=0, block=2), model=model)
    )
    assert seen[0] < seen[-1]  # the bright slab stays brighter than the dark one


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile": 12}, "multiple of 8"),
        ({"tile": 4}, "at least 8"),
        ({"mode": "4d"}, "mode"),
        ({"axis": "t"}, "axis"),
        ({"overlap": 20, "tile": 16}, "half the tile"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InferenceConfig(**kwargs)


def test_mode_must_fit_the_model():
    volume = np.zeros((4, 16, 16), np.uint8)
    volume[0, 0, 0] = 1
    with pytest.raises(ValueError, match="3D model"):
        run_to_completion(
            iter_segment(volume, one_hot_of_channel(), InferenceConfig(mode="3d"), model=_model())
        )
    with pytest.raises(ValueError, match="input channel"):
        run_to_completion(
            iter_segment(volume, one_hot_of_channel(), InferenceConfig(mode="2.5d"), model=_model())
        )


def test_volume_errors():
    model = _model()
    with pytest.raises(ValueError, match="3D volume"):
        run_to_completion(iter_segment(np.zeros((4, 4)), one_hot_of_channel(), model=model))
    with pytest.raises(ValueError, match="constant"):
        run_to_completion(
            iter_segment(np.full((4, 8, 8), 7, np.uint8), one_hot_of_channel(), model=model)
        )
    nan = np.ones((4, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run_to_completion(iter_segment(nan, one_hot_of_channel(), model=model))


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_bf16_gives_the_same_segmentation_as_fp32():
    """bf16 autocast is only used where it does not change the result (checked here on any CPU)."""
    from napari_tomoseg.core.model import bundled_model_path, load_model
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom

    model = load_model(bundled_model_path())
    ph = make_phantom(PhantomConfig(shape=(4, 96, 96)), seed=5)
    cfg = dict(tile=96, overlap=16, device="cpu")
    fp32 = segment_volume(ph.volume, model, InferenceConfig(precision="fp32", **cfg)).labels
    bf16 = segment_volume(ph.volume, model, InferenceConfig(precision="bf16", **cfg)).labels
    assert (fp32 == bf16).mean() > 0.998
    assert Predictor(model, device="cpu", precision="bf16").precision_name == "bf16"


# ----------------------------------------------------------------- memory budget, speed paths


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GB", 2 * 10**9),
        ("1.5GiB", int(1.5 * 2**30)),
        ("800M", 800 * 2**20),
        ("512 MB", 512e6),
        (10, 10),
    ],
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == int(expected)


@pytest.mark.parametrize("text", ["", "2XB", "-1GB", "0", "lots"])
def test_parse_memory_rejects_nonsense(text):
    with pytest.raises(ValueError, match=r"2GB|positive"):
        parse_memory(text)


def test_memory_budget_picks_block_and_batch_and_names_the_minimum():
    model = _model(tile=512, overlap=32)
    shape = (256, 1024, 1024)
    kw = dict(mode="2d", axis=0, tile=512, overlap=32, stitch="valid", itemsize=1)
    small = plan_memory(model, shape, budget=int(1e9), **kw)
    big = plan_memory(model, shape, budget=int(2e9), **kw)
    assert small.estimate <= 1e9 and big.estimate <= 2e9
    assert 1 <= small.block <= big.block
    # the plan does not grow with the volume, only with the plane
    assert plan_memory(model, (4096, 1024, 1024), budget=int(2e9), **kw) == big
    with pytest.raises(ValueError, match=r"at least .* is needed"):
        plan_memory(model, shape, budget=big.minimum - 1, **kw)
    with pytest.raises(ValueError, match="too small"):
        resolve(InferenceConfig(memory=10**6), model, shape)


def test_valid_stitching_does_not_depend_on_block_or_batch_position():
    """Fixed batch shapes: the labels are identical whatever the slab size (distributed relies on it)."""
    model = _model(tile=32, overlap=8)
    predictor = Predictor(model, device="cpu", precision="fp32")
    volume = np.random.default_rng(7).integers(0, 255, (7, 40, 56)).astype(np.uint8)
    runs = [
        run_to_completion(
            iter_segment(
                volume,
                predictor,
                InferenceConfig(block=block, batch_size=3),
                grey_range=(0.0, 255.0),
            )
        ).labels
        for block in (1, 2, 7)
    ]
    for labels in runs[1:]:
        np.testing.assert_array_equal(labels, runs[0])


def test_valid_and_blend_stitching_agree_on_a_real_network():
    model = _model(tile=32, overlap=16)
    volume = np.random.default_rng(8).integers(0, 255, (2, 96, 80)).astype(np.uint8)
    cfg = dict(tile=32, overlap=16, device="cpu")
    valid = segment_volume(volume, model, InferenceConfig(stitch="valid", **cfg)).labels
    blend = segment_volume(volume, model, InferenceConfig(stitch="blend", **cfg)).labels
    assert (valid == blend).mean() > 0.97
    with pytest.raises(ValueError, match=r"2d-3axes modes, not '3d'"):
        resolve(InferenceConfig(stitch="valid", mode="3d"), _model("3d", 3), (4, 8, 8))


@pytest.mark.parametrize("ax", [0, 1, 2])
@pytest.mark.parametrize("block", [2, 7])
def test_multi_axis_25d_passes_see_their_own_axis_neighbours(ax, block):
    # Channel 0 of a 5-slice network is the slice two before along the pass's axis. On a volume
    # that varies along one axis only, the two passes across that axis see the slice itself and the
    # pass along it sees the slice two before (mirrored at the volume's first face): each voxel gets
    # probability 2/3 for its own value and 1/3 for that neighbour's.
    n = 9
    values = np.random.default_rng(ax).integers(1, 4, n).astype(np.uint8)
    shape = [6, 10, 11]
    shape[ax] = n
    volume = np.broadcast_to(values.reshape([-1 if i == ax else 1 for i in range(3)]), shape).copy()
    probs = np.zeros((3, *shape), np.float16)
    cfg = InferenceConfig(mode="2d-3axes", tile=16, overlap=4, block=block)
    run_to_completion(
        iter_segment(
            volume,
            one_hot_of_channel(0),
            cfg,
            model=_model("2d-3axes", 2, 5),
            grey_range=(0.0, 1.0),
            probabilities_out=probs,
        )
    )
    before = values[np.abs(np.arange(n) - 2)]  # mirrored: -2 -> 2, -1 -> 1
    eye = np.eye(3)
    expected = 2 / 3 * eye[values - 1] + 1 / 3 * eye[before - 1]  # (n, 3)
    got = np.moveaxis(probs, ax + 1, 1).reshape(3, n, -1).astype(np.float64)
    np.testing.assert_allclose(got, expected.T[:, :, None].repeat(got.shape[2], 2), atol=2e-3)


def test_a_2p5d_model_runs_in_2d_only_with_its_neighbours():
    model = _model("2.5d", 2, 3)
    volume = np.ones((4, 16, 16), np.uint8)
    with pytest.raises(ValueError, match=r"mode '2d' does not fit this model.*2d-3axes"):
        resolve(InferenceConfig(mode="2d"), model, volume.shape)
    assert resolve(InferenceConfig(mode="2d-3axes"), model, volume.shape).mode == "2d-3axes"


def test_multi_axis_labels_do_not_depend_on_the_slab_depth_and_match_blending():
    # A real (random) network: the z-slabs, the z-tiles of the y and x passes and the mirror padding
    # must line up so that any slab depth gives the same labels.
    model = TomosegModel(
        ModularUNet(UNetConfig(ndim=2, in_channels=1, n_phases=3, base_filters=4)),
        COMPOSITE_PHASES,
    )
    model.network.eval()
    volume = np.random.default_rng(3).integers(0, 255, (45, 40, 36)).astype(np.uint8)
    cfg = dict(mode="2d-3axes", tile=32, overlap=16, device="cpu")
    runs = {
        b: segment_volume(volume, model, InferenceConfig(block=b, **cfg)).labels
        for b in (1, 7, 32, 45)
    }
    for b in (7, 32, 45):
        np.testing.assert_array_equal(runs[b], runs[1])
    auto = resolve(InferenceConfig(**cfg), model, volume.shape)
    assert auto.stitch == "valid" and auto.block == 23  # whole z-tiles: 45 rows are 2 tiles of 23
    blend = segment_volume(volume, model, InferenceConfig(stitch="blend", **cfg)).labels
    assert (runs[1] == blend).mean() > 0.97


class _FakeOOM(RuntimeError):
    pass


def test_out_of_memory_halves_the_batch_instead_of_failing():
    class Owner:
        max_batch = None

    owner, seen = Owner(), []

    def fn(batch):
        seen.append(len(batch))
        if len(batch) > 3:
            raise _FakeOOM("CUDA out of memory. Tried to allocate 2.00 GiB")
        return batch.sum()

    batch = np.ones((8, 1, 2, 2), np.float32)
    results = run_halving(fn, batch, owner)
    assert sum(results) == batch.sum()
    assert seen == [8, 4, 2, 2, 2, 2] and owner.max_batch == 2
    # remembered for the next batch; other errors pass through; one tile that fails is an error
    seen.clear()
    run_halving(fn, batch, owner)
    assert seen == [2, 2, 2, 2]
    with pytest.raises(ValueError):
        run_halving(lambda b: (_ for _ in ()).throw(ValueError("bad")), batch, owner)
    owner.max_batch = 1
    with pytest.raises(MemoryError, match="single tile"):
        run_halving(lambda b: (_ for _ in ()).throw(_FakeOOM("out of memory")), batch, owner)


def test_predictor_predict_core_matches_its_probabilities():
    model = _model(tile=32, overlap=8)
    predictor = Predictor(model, device="cpu", precision="fp32")
    batch = np.random.default_rng(9).random((3, 1, 32, 40), dtype=np.float32)
    core = (slice(4, 28), slice(4, 36))
    labels, probs = predictor.predict_core(batch, core, probabilities=True)
    full = predictor(batch)[(slice(None), slice(None), *core)]
    np.testing.assert_allclose(probs, full, atol=1e-5)
    np.testing.assert_array_equal(labels, full.argmax(1))
    assert predictor.predict_core(batch, core, probabilities=False)[1] is None
