"""Phase fractions and profiles equal exact label counts, streamed from zarr, with clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_tomoseg.core.measure import fractions as fr
from napari_tomoseg.core.measure.fractions import iter_fractions, measure_fractions
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable
from napari_tomoseg.core.progress import Cancelled, CancelToken


def _labels(shape=(23, 17, 11), seed=0, high=4):
    return np.random.default_rng(seed).integers(0, high, shape, dtype=np.uint8)


def _exact_profile(lab, mask, axis, n_ids):
    moved = np.moveaxis(lab, axis, 0)
    m = np.moveaxis(mask, axis, 0)
    return np.array(
        [
            [np.count_nonzero((s == k) & ms) for k in range(n_ids)]
            for s, ms in zip(moved, m, strict=False)
        ]
    )


@pytest.mark.parametrize("axis", ["z", "y", "x"])
@pytest.mark.parametrize("slab", [1, 4])
def test_counts_and_profile_are_exact(axis, slab, monkeypatch):
    monkeypatch.setattr(fr, "SLAB_VOXELS", 17 * 11 * 5)  # several slabs, last one partial
    lab = _labels()
    mask = np.random.default_rng(1).random(lab.shape) < 0.6
    res = measure_fractions(
        lab, phases=COMPOSITE_PHASES, mask=mask, axis=axis, slab=slab, voxel_size="2,1,0.5um"
    )
    assert res.counts.tolist() == np.bincount(lab.ravel(), minlength=4).tolist()
    assert res.mask_counts.tolist() == np.bincount(lab[mask], minlength=4).tolist()
    exact = _exact_profile(lab, mask, "zyx".index(axis), 4)
    starts = np.arange(0, exact.shape[0], slab)
    assert res.profile.counts.tolist() == np.add.reduceat(exact, starts).tolist()
    labelled = lab > 0
    assert res.fractions == pytest.approx(
        np.bincount(lab[labelled], minlength=4)[1:] / labelled.sum()
    )
    spacing = {"z": 2.0, "y": 1.0, "x": 0.5}[axis]
    stops = np.minimum(starts + slab, exact.shape[0])
    assert res.profile.positions == pytest.approx((starts + stops) / 2 * spacing)
    assert res.volumes == pytest.approx(res.counts[1:] * 1.0)


def test_many_phases_use_the_same_exact_counts():
    phases = PhaseTable.from_names([f"p{i}" for i in range(12)])
    lab = _labels(high=13)
    res = measure_fractions(lab, phases=phases, axis="y")
    assert res.counts.tolist() == np.bincount(lab.ravel(), minlength=13).tolist()
    assert res.profile.counts.sum(axis=0).tolist() == res.counts.tolist()


def test_streams_from_zarr_and_reports_progress(tmp_path):
    lab = _labels((40, 16, 16))
    z = zarr.create_array(tmp_path / "l.zarr", shape=lab.shape, chunks=(8, 16, 16), dtype=np.uint8)
    z[:] = lab
    gen = iter_fractions(z, phases=COMPOSITE_PHASES, axis="z")
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        res = stop.value
    assert events[-1].done == lab.size and events[-1].fraction == 1.0
    assert (
        res.profile.counts.tolist() == _exact_profile(lab, np.ones_like(lab, bool), 0, 4).tolist()
    )


def test_results_are_json_ready_with_units_and_empty_notes():
    lab = np.ones((4, 4, 4), np.uint8)
    lab[0] = 0  # an unlabelled slice
    res = measure_fractions(lab, phases=COMPOSITE_PHASES, voxel_size=2.0)
    text = json.dumps(res.to_dict(), allow_nan=False)
    assert "NaN" not in text
    rows = res.to_rows()
    assert rows[0]["volume (µm³)"] == 48 * 8.0
    assert rows[1]["fraction"] == 0.0 and rows[1]["note"].startswith("empty")
    prof = res.profile.to_rows()
    assert prof[0]["matrix fraction"] is None and prof[0]["note"]
    assert "position z (µm)" in prof[0]
    nocal = measure_fractions(lab, phases=COMPOSITE_PHASES)
    assert "volume (voxel³)" in nocal.to_rows()[0]


def test_bad_input_is_refused():
    lab = _labels()
    with pytest.raises(ValueError, match="not integer phase ids"):
        measure_fractions(lab.astype(np.float32), phases=COMPOSITE_PHASES)
    with pytest.raises(ValueError, match=r"ids .*phase table"):
        measure_fractions(lab + 1, phases=COMPOSITE_PHASES)
    with pytest.raises(ValueError, match="mask"):
        measure_fractions(lab, phases=COMPOSITE_PHASES, mask=np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="axis"):
        measure_fractions(lab, phases=COMPOSITE_PHASES, axis="w")
    with pytest.raises(ValueError, match="voxel size"):
        measure_fractions(lab, phases=COMPOSITE_PHASES, voxel_size="0")


def test_cancel_stops():
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        measure_fractions(_labels(), phases=COMPOSITE_PHASES, cancel=token)
