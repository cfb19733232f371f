"""Blob analysis and clean-up on hand-made label volumes whose blobs are known exactly."""

import numpy as np
import pytest
from scipy import ndimage

from napari_tomoseg.core.measure import blobs as postprocess
from napari_tomoseg.core.measure.blobs import (
    blob_mask,
    find_blobs,
    iter_find_blobs,
    phase_statistics,
    reassign_blobs,
    remove_small_objects,
    slice_fractions,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES
from napari_tomoseg.core.progress import Cancelled, CancelToken

MATRIX, FIBRE, PORE = 1, 2, 3


def _volume():
    """Matrix everywhere; pores: slice 1 a 2x2 square and a 1x12 streak, slice 3 a 3x6 rectangle
    touching a fibre disc; slice 0 and 2 have no pore."""
    v = np.full((4, 20, 24), MATRIX, dtype=np.uint8)
    v[1, 2:4, 2:4] = PORE  # area 4, aspect 1
    v[1, 10, 5:17] = PORE  # area 12, aspect 12 (a ring-artifact streak)
    v[3, 5:8, 4:10] = PORE  # area 18, aspect 2
    v[3, 5:8, 10:14] = FIBRE  # the rectangle's right neighbour
    v[2, 0:5, 0:5] = FIBRE
    return v


def test_blobs_have_exact_count_area_aspect_and_slice():
    t = find_blobs(_volume(), PORE)
    assert len(t) == 3
    assert t.slice_index.tolist() == [1, 1, 3]
    assert t.label.tolist() == [1, 2, 1]  # raster order inside each slice
    assert t.area.tolist() == [4, 12, 18]
    np.testing.assert_allclose(t.aspect_ratio, [1.0, 12.0, 2.0], rtol=1e-12)
    np.testing.assert_allclose(t.centroid, [[2.5, 2.5], [10.0, 10.5], [6.0, 6.5]])
    # A w x h rectangle: the ellipse with its second moments has axes 2w/sqrt(3), 2h/sqrt(3).
    np.testing.assert_allclose(t.major_axis[2], 12 / np.sqrt(3))
    np.testing.assert_allclose(t.minor_axis[2], 6 / np.sqrt(3))


def test_aspect_ratio_is_rotation_invariant_for_a_diagonal_line():
    v = np.zeros((1, 30, 30), dtype=np.uint8)
    for i in range(20):
        v[0, 5 + i, 5 + i] = PORE
    connected = find_blobs(v, PORE, connectivity=2)
    assert len(connected) == 1 and connected.area[0] == 20
    assert connected.aspect_ratio[0] > 10
    # Corner-touching pixels are separate blobs with 4-connectivity.
    assert len(find_blobs(v, PORE, connectivity=1)) == 20


def test_blobs_along_other_axes_and_in_small_slabs(monkeypatch):
    v = _volume()
    ref = find_blobs(v, PORE)
    t = find_blobs(np.moveaxis(v, 0, 2), PORE, axis=2)
    assert t.slice_index.tolist() == ref.slice_index.tolist()
    assert t.area.tolist() == ref.area.tolist()
    # Slabs of one slice give the same table as one slab for the whole volume.
    monkeypatch.setattr(postprocess, "_SLAB_VOXELS", 1)
    small = find_blobs(v, PORE)
    for name in ("slice_index", "label", "area", "major_axis", "minor_axis"):
        np.testing.assert_array_equal(getattr(small, name), getattr(ref, name))


def test_local_numbers_match_a_2d_labelling_of_each_slice():
    rng = np.random.default_rng(0)
    v = (rng.random((5, 40, 40)) < 0.3).astype(np.uint8) * PORE
    t = find_blobs(v, PORE)
    for z in range(5):
        comp, n = ndimage.label(v[z] == PORE, structure=np.ones((3, 3)))
        rows = t.slice_index == z
        assert rows.sum() == n
        np.testing.assert_array_equal(
            t.area[rows], np.bincount(comp.ravel())[1:][t.label[rows] - 1]
        )


def test_select_by_thresholds():
    t = find_blobs(_volume(), PORE)
    assert t.select(min_area=10, min_aspect=3).tolist() == [False, True, False]
    assert t.select(min_area=5).tolist() == [False, True, True]
    assert t.select(max_area=12, max_aspect=5).tolist() == [True, False, False]
    with pytest.raises(ValueError, match="min_aspect"):
        t.select(min_aspect=0.5)
    with pytest.raises(ValueError, match="max_area"):
        t.select(min_area=10, max_area=5)


def test_reassign_to_a_phase_returns_new_labels():
    v = _volume()
    before = v.copy()
    t = find_blobs(v, PORE)
    new = reassign_blobs(v, t, t.select(min_area=10, min_aspect=3), MATRIX)
    np.testing.assert_array_equal(v, before)  # the input is untouched
    assert new is not v
    assert (new[1, 10, 5:17] == MATRIX).all()
    assert (new[1, 2:4, 2:4] == PORE).all() and (new[3, 5:8, 4:10] == PORE).all()
    assert np.count_nonzero(new != v) == 12


def test_reassign_in_place_only_when_asked():
    v = _volume()
    t = find_blobs(v, PORE)
    out = reassign_blobs(v, t, [2], FIBRE, out=v)
    assert out is v and (v[3, 5:8, 4:10] == FIBRE).all()


def test_reassign_to_surrounding_phase():
    v = _volume()
    v[3, 4:9, 3:15] = FIBRE  # the rectangle is now enclosed by fibre on every side
    v[3, 5:8, 4:10] = PORE
    t = find_blobs(v, PORE)
    new = reassign_blobs(v, t, np.ones(len(t), dtype=bool))
    assert (new[1, 2:4, 2:4] == MATRIX).all() and (new[1, 10, 5:17] == MATRIX).all()
    assert (new[3, 5:8, 4:10] == FIBRE).all()
    assert not (new == PORE).any()


def test_blob_mask_highlights_selected_blobs_only():
    v = _volume()
    t = find_blobs(v, PORE)
    m = blob_mask(v, t, t.select(min_aspect=1.5))
    assert m.dtype == np.uint8
    assert m.sum() == 12 + 18
    assert m[1, 10, 5:17].all() and not m[1, 2:4, 2:4].any()


def test_changed_labels_are_refused():
    v = _volume()
    t = find_blobs(v, PORE)
    v[1, 15, 15] = PORE  # a new blob in slice 1 after the analysis
    with pytest.raises(ValueError, match="changed since"):
        reassign_blobs(v, t, [0], MATRIX)
    with pytest.raises(ValueError, match="shape"):
        reassign_blobs(v[:2], t, [0], MATRIX)
    with pytest.raises(ValueError, match="already have phase"):
        reassign_blobs(v, t, [0], PORE)
    with pytest.raises(ValueError, match="entries"):
        reassign_blobs(_volume(), t, [True, False], MATRIX)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="3D"):
        find_blobs(np.zeros((4, 4), dtype=np.uint8), 1)
    with pytest.raises(ValueError, match="integer"):
        find_blobs(np.zeros((2, 4, 4), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="phase id"):
        find_blobs(np.zeros((2, 4, 4), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="axis"):
        find_blobs(np.zeros((2, 4, 4), dtype=np.uint8), 1, axis=3)
    with pytest.raises(ValueError, match="connectivity"):
        find_blobs(np.zeros((2, 4, 4), dtype=np.uint8), 1, connectivity=3)  # type: ignore[arg-type]


def test_no_blobs_gives_an_empty_table():
    t = find_blobs(np.full((3, 5, 5), MATRIX, dtype=np.uint8), PORE)
    assert len(t) == 0 and t.centroid.shape == (0, 2)
    assert t.select(min_area=1).shape == (0,)
    assert t.rows() == []


def test_progress_and_cancel(monkeypatch):
    monkeypatch.setattr(postprocess, "_SLAB_VOXELS", 20 * 24)  # one slice per slab
    gen = iter_find_blobs(_volume(), PORE)
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as stop:
        table = stop.value
    assert [e.done for e in events] == [1, 2, 3, 4] and events[-1].fraction == 1.0
    assert len(table) == 3
    token = CancelToken()
    gen = iter_find_blobs(_volume(), PORE, cancel=token)
    next(gen)
    token.cancel()
    with pytest.raises(Cancelled):
        next(gen)


def test_rows_for_csv():
    rows = find_blobs(_volume(), PORE).rows()
    assert rows[1]["slice"] == 1 and rows[1]["area"] == 12
    assert rows[1]["aspect_ratio"] == pytest.approx(12.0)


def test_remove_small_objects_in_3d():
    v = np.full((5, 10, 10), MATRIX, dtype=np.uint8)
    v[2, 2, 2] = PORE  # 1 voxel
    v[1:4, 5:7, 5:7] = PORE  # 12 voxels
    v[0, 9, 9] = PORE
    v[0, 8:10, 8] = FIBRE  # the corner pore has more fibre than matrix around it
    v[0, 8, 9] = FIBRE
    new = remove_small_objects(v, PORE, 2)
    assert new[2, 2, 2] == MATRIX and new[0, 9, 9] == FIBRE
    assert (new[1:4, 5:7, 5:7] == PORE).all()
    assert v[2, 2, 2] == PORE  # input untouched
    assert np.count_nonzero(remove_small_objects(v, PORE, 13, to=FIBRE) == PORE) == 0
    with pytest.raises(ValueError, match="min_size"):
        remove_small_objects(v, PORE, 0)


def test_slice_fractions_profile():
    v = np.zeros((3, 4, 5), dtype=np.uint8)
    v[0] = MATRIX
    v[1, :2] = FIBRE
    v[1, 2:] = PORE
    # slice 2 unlabelled
    f = slice_fractions(v, 3)
    np.testing.assert_allclose(f[0], [1, 0, 0])
    np.testing.assert_allclose(f[1], [0, 0.5, 0.5])
    assert np.isnan(f[2]).all()
    fy = slice_fractions(v, 3, axis=1)
    assert fy.shape == (4, 3)
    np.testing.assert_allclose(fy[0], [0.5, 0.5, 0.0])
    mask = np.zeros(v.shape, dtype=bool)
    mask[1, 0] = True
    np.testing.assert_allclose(slice_fractions(v, 3, mask=mask)[1], [0, 1, 0])
    with pytest.raises(ValueError, match="outside"):
        slice_fractions(v, 2)


def test_phase_statistics_in_physical_units():
    v = np.zeros((2, 2, 5), dtype=np.uint8)
    v[0] = MATRIX
    v[1, 0] = FIBRE
    stats = phase_statistics(v, COMPOSITE_PHASES, voxel_size=(2.0, 1.0, 0.5))
    assert [s.name for s in stats] == ["matrix", "fibre", "pore"]
    assert [s.voxels for s in stats] == [10, 5, 0]
    assert stats[0].fraction == pytest.approx(10 / 15)
    assert stats[1].volume_um3 == pytest.approx(5.0)
    assert phase_statistics(v, COMPOSITE_PHASES)[0].volume_um3 is None
