"""Field-of-view detection: the reconstruction circle of a CT volume."""

import numpy as np
import pytest

from napari_tomoseg.core.prep.mask import detect_field_of_view


def _scan(shape=(12, 80, 90), centre=(40.0, 47.0), radius=33.0, axis=0, seed=0):
    rng = np.random.default_rng(seed)
    vol = rng.integers(20, 240, size=shape, dtype=np.uint8)
    plane = [s for a, s in enumerate(shape) if a != axis]
    rr, cc = np.ogrid[: plane[0], : plane[1]]
    disc = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2
    vol[~np.broadcast_to(np.expand_dims(disc, axis), shape)] = 0
    return vol, disc


@pytest.mark.parametrize("axis", [0, 2])
def test_finds_the_reconstruction_circle(axis):
    shape = (12, 80, 90) if axis == 0 else (80, 90, 12)
    vol, disc = _scan(shape=shape, axis=axis)
    fov = detect_field_of_view(vol, axis=axis, margin=0.0)
    assert fov is not None
    assert fov.centre == pytest.approx((40.0, 47.0), abs=0.5)
    assert fov.radius == pytest.approx(33.0, abs=0.7)
    mask = fov.mask()
    assert mask.shape == shape
    # agrees with the true disc except on a thin rim
    agree = (np.expand_dims(fov.disc(), axis) == np.expand_dims(disc, axis)).mean()
    assert agree > 0.98


def test_margin_shrinks_and_mask_excludes_outside():
    vol, disc = _scan()
    fov = detect_field_of_view(vol, margin=3.0)
    assert fov.radius == pytest.approx(30.0, abs=0.7)
    m = fov.mask()
    assert not m[:, ~disc].any()  # never claims a voxel outside the circle
    assert not m.flags.writeable  # a view, not a copy per slice


def test_constant_pore_inside_is_not_outside():
    vol, _disc = _scan()
    vol[:, 35:45, 42:52] = 0  # a pore reading exactly the border value
    fov = detect_field_of_view(vol, margin=0.0)
    assert fov.disc()[40, 47]


def test_cropped_volume_has_no_field_of_view():
    rng = np.random.default_rng(1)
    vol = rng.integers(0, 255, size=(8, 40, 40), dtype=np.uint8)
    assert detect_field_of_view(vol) is None


def test_bad_input():
    with pytest.raises(ValueError, match="3D"):
        detect_field_of_view(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="axis"):
        detect_field_of_view(np.zeros((4, 4, 4)), axis=3)
