"""Orientation tensor from labels of generated cylinders with known directions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_tomoseg.core.measure.orientation import fibre_orientation
from napari_tomoseg.core.phases import COMPOSITE_PHASES


def _fibres(shape, directions, radius, rng):
    """Labels (1 matrix, 2 fibre) of infinite cylinders, and the volume-weighted direction tensor."""
    lab = np.ones(shape, np.uint8)
    pts = np.stack(np.indices(shape), axis=-1).astype(np.float32)
    tensor = np.zeros((3, 3))
    for d in directions:
        d = np.asarray(d, float) / np.linalg.norm(d)
        c = rng.uniform(0.2, 0.8, 3) * np.asarray(shape)
        v = pts - c
        dist2 = (v**2).sum(-1) - (v @ d.astype(np.float32)) ** 2
        new = (dist2 <= radius * radius) & (lab == 1)
        lab[new] = 2
        tensor += new.sum() * np.outer(d, d)
    return lab, tensor / np.trace(tensor)


def _tilted(mean, spread, n, rng):
    mean = np.asarray(mean, float) / np.linalg.norm(mean)
    out = []
    for _ in range(n):
        v = mean + spread * rng.standard_normal(3)
        out.append(v / np.linalg.norm(v))
    return out


@pytest.mark.parametrize(
    ("mean", "spread"), [((1, 0, 0), 0.0), ((0.3, 1, 0.5), 0.05), ((1, 0.2, 0), 0.5)]
)
def test_tensor_from_labels_matches_generator(mean, spread):
    rng = np.random.default_rng(3)
    lab, truth = _fibres((64, 64, 64), _tilted(mean, spread, 8, rng), 3.0, rng)
    res = fibre_orientation(lab, "fibre", phases=COMPOSITE_PHASES, fibre_radius=3.0, block=32)
    assert np.trace(res.tensor) == pytest.approx(1.0)
    assert np.abs(res.tensor - truth).max() < 0.05
    assert res.voxels == np.count_nonzero(lab == 2)
    assert res.block_voxels.sum() == res.voxels
    assert res.angle_fraction.sum() == pytest.approx(1.0)
    for t in res.block_tensors:
        assert np.trace(t) == pytest.approx(1.0)


def test_aligned_fibres_principal_direction_and_angles():
    rng = np.random.default_rng(0)
    lab, _ = _fibres((48, 40, 40), [(0, 1, 0)] * 4, 3.0, rng)
    res = fibre_orientation(lab, phases=COMPOSITE_PHASES, axis="y", voxel_size="1.3um")
    assert np.abs(res.principal_direction) == pytest.approx([0, 1, 0], abs=0.02)
    assert res.angle_fraction[0] > 0.9  # nearly all voxels within 5 degrees of y
    assert res.integration_scale == pytest.approx(4 * 1.3)
    out = res.to_dict()
    json.dumps(out, allow_nan=False)
    assert len(out["tensor"]) == 3 and len(out["tensor"][0]) == 3


def test_grey_image_gives_the_same_tensor():
    rng = np.random.default_rng(1)
    lab, truth = _fibres((40, 40, 40), _tilted((1, 1, 0), 0.1, 5, rng), 3.0, rng)
    image = (lab == 2).astype(np.float32) * 100 + rng.normal(0, 5, lab.shape)
    res = fibre_orientation(lab, phases=COMPOSITE_PHASES, image=image, fibre_radius=3.0)
    assert res.source == "image"
    assert np.abs(res.tensor - truth).max() < 0.05


def test_empty_phase_and_errors():
    lab = np.ones((10, 10, 10), np.uint8)
    res = fibre_orientation(lab, phases=COMPOSITE_PHASES)
    assert res.voxels == 0 and res.note.startswith("empty")
    assert res.to_dict()["tensor"][0][0] is None
    with pytest.raises(ValueError, match="image"):
        fibre_orientation(lab, phases=COMPOSITE_PHASES, image=np.zeros((3, 3, 3)))
    with pytest.raises(ValueError, match="axis"):
        fibre_orientation(lab, phases=COMPOSITE_PHASES, axis="q")
    with pytest.raises(ValueError, match="fibre_radius"):
        fibre_orientation(lab, phases=COMPOSITE_PHASES, fibre_radius=-1)
