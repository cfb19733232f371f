"""Local thickness against known geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
