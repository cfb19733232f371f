"""Objects of a phase: isolated spheres measured against their true size, shapes, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_tomoseg.core.measure.objects import measure_objects
from napari_tomoseg.core.phases import COMPOSITE_PHASES

PORE = "pore"


def _spheres(shape, centres, radii):
    lab = np.ones(shape, np.uint8)
    z, y, x = np.indices(shape)
    for c, r in zip(centres, radii, strict=True):
        lab[(z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r * r] = 3
    return lab


def test_isolated_spheres_have_their_diameter_within_5_percent():
    radii = [3.0, 5.0, 8.0]
    centres = [(10, 10, 10), (12, 30, 40), (30, 20, 25)]
    lab = _spheres((44, 48, 56), centres, radii)
    t = measure_objects(lab, PORE, phases=COMPOSITE_PHASES, voxel_size="1.5um")
    assert len(t) == 3
    order = np.argsort(t.volume)
    assert t.equivalent_diameter[order] == pytest.approx([2 * r * 1.5 for r in radii], rel=0.05)
    # a sphere's principal lengths are its diameter, elongation 1
    assert t.principal_lengths[order[-1]] == pytest.approx([16 * 1.5] * 3, rel=0.05)
    assert t.elongation == pytest.approx(1.0, abs=0.05)
    assert sorted(map(tuple, np.round(t.centroid / 1.5).astype(int))) == sorted(centres)
    assert not t.touches_border.any()


def test_rod_is_elongated_and_border_is_flagged():
    lab = np.ones((30, 20, 20), np.uint8)
    lab[5:25, 9:11, 9:11] = 3  # a 20 x 2 x 2 rod
    lab[0:3, 0:3, 0:3] = 3  # a corner cube
    t = measure_objects(lab, 3, phases=COMPOSITE_PHASES)
    rod = int(np.argmax(t.voxels))
    assert t.principal_lengths[rod, 0] == pytest.approx(
        20 * np.sqrt(5 / 3) * np.sqrt(1 + 1 / 400), rel=0.02
    )
    assert t.elongation[rod] > 5
    assert t.touches_border.tolist() == [True, False] or t.touches_border.tolist() == [False, True]
    assert t.touches_border[1 - rod]
    assert t.bbox[rod].tolist() == [5, 9, 9, 25, 11, 11]


def test_connectivity_and_size_distribution():
    lab = np.ones((6, 6, 6), np.uint8)
    lab[1, 1, 1] = lab[2, 2, 2] = 3  # corner-touching voxels
    assert len(measure_objects(lab, "pore", phases=COMPOSITE_PHASES, connectivity=26)) == 1
    t = measure_objects(lab, "pore", phases=COMPOSITE_PHASES, connectivity=6, keep_labels=True)
    assert len(t) == 2 and t.labels is not None and t.labels.max() == 2
    d = t.size_distribution(bins=4)
    assert d.number.sum() == 2 and d.volume_fraction.sum() == pytest.approx(1.0)
    json.dumps(t.to_dict(), allow_nan=False)


def test_empty_phase_is_reported_with_a_note():
    t = measure_objects(np.ones((5, 5, 5), np.uint8), "pore", phases=COMPOSITE_PHASES)
    assert len(t) == 0 and t.note.startswith("empty")
    out = t.to_dict()
    assert out["count"] == 0 and out["mean_equivalent_diameter"] is None


def test_budget_and_bad_input():
    lab = np.ones((20, 20, 20), np.uint8)
    with pytest.raises(ValueError, match=r"budget .* crop"):
        measure_objects(lab, "pore", phases=COMPOSITE_PHASES, max_memory=1000)
    with pytest.raises(ValueError, match="no phase named"):
        measure_objects(lab, "glass", phases=COMPOSITE_PHASES)
    with pytest.raises(ValueError, match="connectivity"):
        measure_objects(lab, "pore", phases=COMPOSITE_PHASES, connectivity=8)
    with pytest.raises(ValueError, match="phase table"):
        measure_objects(lab * 5, "pore", phases=COMPOSITE_PHASES)
