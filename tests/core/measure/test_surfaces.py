"""Surface and interface areas against spheres and planes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_tomoseg.core.measure.surfaces import surface_areas
from napari_tomoseg.core.phases import COMPOSITE_PHASES


@pytest.mark.parametrize("r", [6.0, 10.0])
def test_sphere_area_within_5_percent(r, monkeypatch):
    import napari_tomoseg.core.measure.surfaces as surfaces

    monkeypatch.setattr(surfaces, "_SLAB", 16)  # several slabs must tile the surface exactly
    z, y, x = np.indices((40, 40, 40))
    lab = np.ones((40, 40, 40), np.uint8)
    lab[(z - 19.6) ** 2 + (y - 20.3) ** 2 + (x - 19.8) ** 2 <= r * r] = 3
    res = surface_areas(lab, phases=COMPOSITE_PHASES, voxel_size=2.0)
    truth = 4 * np.pi * (2 * r) ** 2
    assert res.area[2] == pytest.approx(truth, rel=0.05)
    assert res.interface[("matrix", "pore")] == pytest.approx(res.area[2], rel=1e-3)
    assert res.interface[("matrix", "fibre")] == 0.0
    assert res.area[1] == 0.0
    json.dumps(res.to_dict(), allow_nan=False)


def test_three_phase_interfaces_add_up():
    lab = np.ones((30, 24, 24), np.uint8)
    lab[:, :, 12:] = 2  # matrix | fibre plane (x)
    lab[20:, :, :] = 3  # pore slab across both (z)
    res = surface_areas(lab, phases=COMPOSITE_PHASES, voxel_size="1um")
    assert res.interface[("matrix", "fibre")] == pytest.approx(
        19.5 * 23, rel=0.03
    )  # cells up to the triple line
    assert res.interface[("matrix", "pore")] == pytest.approx(12 * 23, rel=0.1)
    assert res.area[0] == pytest.approx(
        res.interface[("matrix", "fibre")] + res.interface[("matrix", "pore")], rel=0.02
    )
    assert res.specific_surface == pytest.approx(res.area / (30 * 24 * 24))
    assert res.to_rows()[0]["area (µm²)"] == pytest.approx(res.area[0])
