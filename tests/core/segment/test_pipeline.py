"""The public pipeline: Segmenter -> plan -> run / compute, output stores, and who builds predictors."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_tomoseg.core.measure.uncertainty import SliceScoreAccumulator, slice_scores
from napari_tomoseg.core.model import InferenceDefaults, ModularUNet, TomosegModel, UNetConfig
from napari_tomoseg.core.phases import COMPOSITE_PHASES
from napari_tomoseg.core.progress import run_to_completion
from napari_tomoseg.core.segment import (
    EntropyWriter,
    InferenceConfig,
    Segmenter,
    entropy,
    iter_segment,
    output_chunks,
    prediction_stores,
    region_grid,
    resolve,
)

SRC = Path(__file__).resolve().parents[3] / "src" / "napari_tomoseg"


def _model(mode: str = "2d", ndim: int = 2, in_channels: int = 1) -> TomosegModel:
    torch.manual_seed(0)
    net = ModularUNet(UNetConfig(ndim=ndim, in_channels=in_channels, base_filters=2))
    return TomosegModel(
        net, COMPOSITE_PHASES, defaults=InferenceDefaults(mode=mode, tile=32, overlap=8)
    )


# (model mode, ndim, in_channels, config changes): every strategy, several regions each
CASES = {
    "2d-z": ("2d", 2, 1, {"block": 3}),
    "2d-y": ("2d", 2, 1, {"block": 5, "axis": "y"}),
    "2.5d": ("2.5d", 2, 3, {"block": 3}),
    "2d-3axes": ("2d", 2, 1, {"mode": "2d-3axes", "block": 4}),
    "2d-3axes-blend": (
        "2d",
        2,
        1,
        {"mode": "2d-3axes", "stitch": "blend", "block": 16, "tile": 64},
    ),
    "2d-blend": ("2d", 2, 1, {"stitch": "blend", "block": 4}),
    "3d": ("3d", 3, 1, {"block": 4}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compute_of_a_region_is_what_run_stores_there(case):
    mode, ndim, k, changes = CASES[case]
    model = _model(mode, ndim, k)
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 255, (8, 20, 24)).astype(np.uint8)
    mask = np.ones(volume.shape, bool)
    mask[:, :3] = False
    config = InferenceConfig(device="cpu", precision="fp32", batch_size=8, **changes)
    seg = Segmenter(model, config)
    plan = seg.plan(volume, mask=mask, probabilities=True)
    assert len(plan.regions) > 1, "the case must have several regions"
    probs = np.zeros((3, *volume.shape), np.float16)
    result = plan.segment(probabilities_out=probs)
    labels = np.asarray(result.labels)
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and (labels[~mask] == 0).all()
    for region in plan.regions:
        got, p = plan.compute(region)
        np.testing.assert_array_equal(got, labels[region])
        assert p is not None
        np.testing.assert_array_equal(p.astype(np.float16), probs[(slice(None), *region)])


def test_plan_decides_once_and_exposes_its_decisions():
    model = _model()
    volume = np.random.default_rng(0).integers(0, 255, (9, 20, 24)).astype(np.uint8)
    seg = Segmenter(model, InferenceConfig(device="cpu", block=4))
    assert seg.device == torch.device("cpu") and seg.precision_name in ("fp32", "bf16")
    plan = seg.plan(volume)
    assert plan.settings == resolve(seg.config, model, volume.shape, device=seg.device)
    assert plan.shape == volume.shape and plan.settings.block == 4
    assert [r[0] for r in plan.regions] == [slice(0, 4), slice(4, 8), slice(8, 9)]
    assert plan.output_chunks == (4, 20, 24)
    assert plan.grey_range == model.normalization.volume_range(volume)
    # a grey range given: the volume is taken as prepared, the range used as it is
    assert seg.plan(volume, grey_range=(10.0, 20.0)).grey_range == (10.0, 20.0)


def test_probabilities_out_needs_a_plan_that_asked_for_them():
    seg = Segmenter(_model(), InferenceConfig(device="cpu"))
    plan = seg.plan(np.zeros((2, 16, 16), np.uint8), grey_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="probabilities=True"):
        plan.segment(probabilities_out=np.zeros((3, 2, 16, 16), np.float16))


@pytest.mark.parametrize("case", list(CASES))
def test_every_output_chunk_is_written_by_exactly_one_region(case):
    mode, ndim, k, changes = CASES[case]
    model = _model(mode, ndim, k)
    shape = (10, 700, 530)  # wider than a 512 chunk
    r = resolve(InferenceConfig(**changes), model, shape)
    chunks = output_chunks(shape, r)
    writers = np.zeros([-(-s // c) for s, c in zip(shape, chunks, strict=True)], int)
    for region in region_grid(shape, r):
        hit = tuple(
            slice(s.start // c, -(-s.stop // c)) for s, c in zip(region, chunks, strict=True)
        )
        for s, c in zip(region, chunks, strict=True):  # a region covers whole chunks
            assert s.start % c == 0 and (s.stop % c == 0 or s.stop == shape[region.index(s)])
        writers[hit] += 1
    assert (writers == 1).all()


def test_a_segmenter_pickles_for_dask_workers():
    model = _model()
    volume = np.random.default_rng(2).integers(0, 255, (4, 16, 16)).astype(np.uint8)
    seg = Segmenter(model, InferenceConfig(device="cpu", precision="fp32"))
    copy = pickle.loads(pickle.dumps(seg))
    assert copy.predictor is not seg.predictor
    plan, again = seg.plan(volume), copy.plan(volume)
    np.testing.assert_array_equal(
        plan.compute(plan.regions[0])[0], again.compute(plan.regions[0])[0]
    )
    with pytest.raises(TypeError, match="custom predictor"):
        pickle.dumps(Segmenter(model, predictor=lambda b: b))


def test_with_options_shares_the_predictor_unless_the_device_changes():
    seg = Segmenter(_model(), InferenceConfig(device="cpu"))
    assert seg.with_options(axis="y").predictor is seg.predictor
    assert seg.with_options(axis="y").config.axis == "y"
    assert seg.with_options(precision="fp32").predictor is not seg.predictor


def test_iter_segment_with_a_plain_callable_reports_custom():
    def predict(batch):
        return np.full((len(batch), 3, *batch.shape[2:]), 1 / 3, np.float32)

    volume = np.random.default_rng(5).integers(0, 255, (2, 16, 16)).astype(np.uint8)
    gen = iter_segment(volume, predict, model=_model())
    result = run_to_completion(gen)
    assert (result.device, result.precision) == ("custom", "custom")


def test_entropy_writer_quantises_into_uint8_and_scores_slices():
    rng = np.random.default_rng(3)
    p = rng.random((3, 4, 6, 5)).astype(np.float32)
    p /= p.sum(0)
    u = entropy(p)
    out8 = np.zeros((4, 6, 5), np.uint8)
    scores = SliceScoreAccumulator(out8.shape)
    w = EntropyWriter(out8, scores)
    w[(slice(None), slice(0, 2), slice(None), slice(None))] = p[:, :2]
    w[(slice(None), slice(2, 4), slice(None), slice(None))] = p[:, 2:].astype(np.float16)
    expected = np.rint(entropy(np.concatenate([p[:, :2], p[:, 2:].astype(np.float16)], 1)) * 255)
    np.testing.assert_array_equal(out8, expected.astype(np.uint8))
    assert abs(out8.astype(float) / 255 - u).max() < 0.01
    for axis in range(3):
        np.testing.assert_allclose(
            scores.scores(axis),
            slice_scores(
                entropy(np.concatenate([p[:, :2], p[:, 2:].astype(np.float16)], 1)), axis=axis
            ),
            rtol=1e-6,
        )
    out16 = np.zeros((4, 6, 5), np.float16)
    EntropyWriter(out16)[(slice(None), slice(None), slice(None), slice(None))] = p
    np.testing.assert_array_equal(out16, u.astype(np.float16))


def test_prediction_stores_hold_labels_counts_and_uncertainty(tmp_path):
    model = _model()
    volume = np.random.default_rng(4).integers(0, 255, (6, 20, 16)).astype(np.uint8)
    seg = Segmenter(model, InferenceConfig(device="cpu", precision="fp32", block=2))
    plan = seg.plan(volume, probabilities=True)
    probs = np.zeros((3, *volume.shape), np.float32)
    reference = seg.plan(volume, probabilities=True).segment(probabilities_out=probs)
    with prediction_stores(
        tmp_path / "p.zarr",
        plan.shape,
        phases=model.phases,
        chunks=plan.output_chunks,
        uncertainty=tmp_path / "u.zarr",
        voxel_size=(1.0, 2.0, 2.0),
    ) as stores:
        plan.segment(stores.out, probabilities_out=stores.probabilities_out)
        assert not (tmp_path / "p.zarr").exists()  # appears only when complete
    labels = zarr.open_array(str(tmp_path / "p.zarr"), mode="r")[...]
    np.testing.assert_array_equal(labels, reference.labels)
    assert stores.out.counts.tolist() == np.bincount(labels.ravel(), minlength=4).tolist()
    unc = zarr.open_array(str(tmp_path / "u.zarr"), mode="r")[...]
    expected = np.rint(entropy(probs.astype(np.float16)) * np.float32(255)).astype(np.uint8)
    np.testing.assert_array_equal(unc, expected)


def test_a_failed_run_leaves_no_store(tmp_path):
    with (
        pytest.raises(KeyboardInterrupt),
        prediction_stores(
            tmp_path / "p.zarr", (2, 8, 8), phases=COMPOSITE_PHASES, chunks=(1, 8, 8)
        ) as stores,
    ):
        stores.out[0:1] = np.ones((1, 8, 8), np.uint8)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_predictors_are_built_only_in_the_segment_room():
    """Every front end segments through Segmenter: ``Predictor(`` appears only under core/segment."""
    builders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                if name == "Predictor":
                    builders.append(path.relative_to(SRC).as_posix())
    assert builders, "the scan must find the Segmenter's own construction"
    assert all(p.startswith("core/segment/") for p in builders), sorted(set(builders))
