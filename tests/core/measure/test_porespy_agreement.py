"""Our measures agree with PoreSpy's on the same labels (PoreSpy is a test dependency only)."""

from __future__ import annotations

import numpy as np
import porespy as ps
import pytest

from napari_tomoseg.core.measure.fractions import measure_fractions
from napari_tomoseg.core.measure.thickness import local_thickness
from napari_tomoseg.core.phases import PhaseTable

PHASES = PhaseTable.from_names(["solid", "void"])


def _labels(shape, porosity, blobiness, seed):
    void = ps.generators.blobs(shape, porosity=porosity, blobiness=blobiness, seed=seed)
    return void, np.where(void, 2, 1).astype(np.uint8)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("span", [1, 5])
def test_porosity_profile_is_identical(axis, span):
    void, lab = _labels((40, 50, 60), 0.4, 1.5, seed=2)
    ours = measure_fractions(lab, phases=PHASES, axis=axis, slab=span, voxel_size=1.3).profile
    theirs = ps.metrics.porosity_profile(void, axis=axis, span=span, voxel_size=1.3)
    n = len(theirs.porosity)  # PoreSpy drops a last, thinner slab; ours keeps it
    assert np.array_equal(ours.fractions[:n, 1], theirs.porosity)
    assert np.allclose(ours.positions[:n], theirs.position)


@pytest.mark.parametrize(("porosity", "blobiness"), [(0.5, 1.0), (0.3, 2.0)])
def test_local_thickness_mean_within_2_percent(porosity, blobiness):
    void, lab = _labels((64, 64, 64), porosity, blobiness, seed=1)
    ours = local_thickness(lab, "void", phases=PHASES, keep_map=True)
    theirs = ps.filters.local_thickness(void)  # radius of the largest covering sphere
    assert ours.mean == pytest.approx(2 * theirs[void].mean(), rel=0.02)
    # the same convention (whole-voxel radii) gives the same map, voxel for voxel
    assert np.array_equal(ours.map[void], 2 * theirs[void])
