"""Local thickness against known geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from napari_tomoseg.core.measure.thickness import local_thickness, thickness_map
from napari_tomoseg.core.phases import COMPOSITE_PHASES


@pytest.mark.parametrize("r", [3.0, 5.0, 7.5])
def test_cylinder_of_radius_r_has_thickness_2r_within_one_voxel(r):
    _, y, x = np.indices((24, 40, 40))
    cyl = (y - 19) ** 2 + (x - 20) ** 2 <= r * r  # axis through voxel centres
    lab = np.where(cyl, 2, 1).astype(np.uint8)
    res = local_thickness(lab, "fibre", phases=COMPOSITE_PHASES, keep_map=True)
    assert np.all(np.abs(res.map[:, 19, 20] - 2 * r) <= 1.0)
    assert abs(res.maximum - 2 * r) <= 1.0
    assert res.volume_fraction.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("r", [3.0, 5.0, 7.5])
def test_off_grid_cylinder_radius_within_one_voxel(r):
    # Radii are whole voxels (PoreSpy's convention), so an axis between voxel centres can lose up
    # to one voxel of radius: two of diameter.
    _, y, x = np.indices((24, 40, 40))
    cyl = (y - 19.5) ** 2 + (x - 20.2) ** 2 <= r * r
    lab = np.where(cyl, 2, 1).astype(np.uint8)
    res = local_thickness(lab, "fibre", phases=COMPOSITE_PHASES)
    assert abs(res.maximum - 2 * r) <= 2.0
    assert res.volume_fraction.sum() == pytest.approx(1.0)


def test_plate_and_anisotropic_voxels():
    lab = np.ones((30, 20, 20), np.uint8)
    lab[10:18] = 3  # a plate 8 slices thick
    res = local_thickness(lab, "pore", phases=COMPOSITE_PHASES, voxel_size="0.5,1,1")
    # 8 slices of 0.5 µm = 4 µm thick; radii step by the smallest voxel edge (0.5 µm)
    assert res.maximum == pytest.approx(4.0, abs=0.5)
    assert res.units.length == "µm"


def test_thickness_map_is_largest_covering_sphere():
    inside = np.zeros((21, 21, 21), bool)
    inside[3:18, 3:18, 3:18] = True  # a 15-voxel cube
    lt = thickness_map(inside)
    # the nearest voxel outside is 8 away: a sphere of radius 8 covers the centre (open ball)
    assert lt[10, 10, 10] == pytest.approx(16.0)
    assert lt[~inside].max() == 0.0
    assert lt[inside].min() >= 2.0


def test_empty_phase_and_errors():
    res = local_thickness(np.ones((6, 6, 6), np.uint8), "pore", phases=COMPOSITE_PHASES)
    assert res.voxels == 0 and res.mean is None and res.note.startswith("empty")
    json.dumps(res.to_dict(), allow_nan=False)
    with pytest.raises(ValueError, match="budget"):
        local_thickness(
            np.ones((6, 6, 6), np.uint8), "pore", phases=COMPOSITE_PHASES, max_memory=10
        )
    with pytest.raises(ValueError, match="integer"):
        local_thickness(np.ones((6, 6, 6)), "pore", phases=COMPOSITE_PHASES)


def _brute_force(inside, spacing):
    """Every voxel's own largest ball, painted one by one (the definition, slowly)."""
    sp = np.asarray(spacing, float)
    h = sp.min()
    dt = ndimage.distance_transform_edt(inside, sampling=sp)
    level = np.floor(dt / h + 1e-6).astype(int)
    grid = np.indices(inside.shape).reshape(3, -1).T
    best = np.where(inside, 1, 0).ravel()
    for c in np.argwhere(level >= 2):
        k = level[tuple(c)]
        # offsets in whole voxels scaled to units of h, so that ties fall as in the module
        near = np.sqrt((((grid - c) * (sp / h)) ** 2).sum(axis=1)) < k
        best[near] = np.maximum(best[near], k)
    return np.where(inside, 2 * h * best.reshape(inside.shape), 0.0)


@pytest.mark.parametrize("spacing", [(1, 1, 1), (0.5, 1, 1), (1.3, 1.3, 2.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_map_equals_brute_force(spacing, seed):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((18, 22, 26)), 2.0)
    inside = field > np.quantile(field, 0.55)
    lt = thickness_map(inside, spacing)
    assert np.allclose(lt, _brute_force(inside, spacing), atol=1e-5)


def test_both_painting_paths_and_a_wide_window_agree_with_brute_force(monkeypatch):
    import napari_tomoseg.core.measure.thickness as th

    # a ball of radius 11 (its distances pass the first window of 8) next to thin rods
    z, y, x = np.indices((30, 34, 40))
    inside = (z - 15) ** 2 + (y - 16) ** 2 + (x - 14) ** 2 < 11**2
    inside |= ((y - 5) ** 2 + (x - 33) ** 2 < 3.5**2) | ((z - 4) ** 2 + (y - 29) ** 2 < 2.2**2)
    expected = _brute_force(inside, (1, 1, 1))
    for index_ns in (0.0, 1e9):  # every radius painted by index, then every one by rows
        monkeypatch.setattr(th, "_INDEX_NS", index_ns)
        assert np.array_equal(thickness_map(inside), expected)


def test_very_thick_phase_falls_back_to_scipy():
    from napari_tomoseg.core.measure.thickness import _radius_levels

    inside = np.zeros((150, 3, 4), bool)
    inside[2:147] = True  # a plate 145 voxels thick: distances past the largest window (64)
    expected = np.floor(ndimage.distance_transform_edt(inside) + 1e-6)
    assert np.array_equal(_radius_levels(inside, np.ones(3), None), expected)
