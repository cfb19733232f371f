"""Label stores for big volumes: created, reopened, summarised from the stored chunks only."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_tomoseg.core import io
from napari_tomoseg.core.io.labelstore import (
    create_store,
    in_memory_limit,
    is_store,
    needs_store,
    open_store,
    set_store_phases,
    store_phases,
    stored_regions,
    summarize_labels,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable


def _sparse_labels(shape=(20, 40, 30)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[3, 5:15, 2:9] = 1
    labels[3, 20, 20] = 3
    labels[11:13, 30:40, 25:30] = 2
    labels[19, 0, 0] = 1
    return labels


def test_summary_of_a_store_reads_only_stored_chunks_and_equals_the_dense_one(tmp_path) -> None:
    labels = _sparse_labels()
    store = create_store(
        tmp_path / "a.zarr", labels.shape, phases=COMPOSITE_PHASES, chunks=(4, 16, 16)
    )
    regions = list(stored_regions(store))
    assert regions == []  # nothing painted: nothing stored, nothing read
    store[...] = labels  # zarr stores only the chunks that are not all 0
    regions = list(stored_regions(store))
    assert 0 < len(regions) < 5 * 3 * 2
    for r in regions:
        assert np.asarray(store[r]).any()
    dense, sparse = summarize_labels(labels, n_ids=3), summarize_labels(store, n_ids=3)
    np.testing.assert_array_equal(dense.voxels[1:], sparse.voxels[1:])
    assert dense.voxels[1:].tolist() == [71, 100, 1]
    for axis in range(3):
        np.testing.assert_array_equal(dense.presence[axis][:, 1:], sparse.presence[axis][:, 1:])
    assert sparse.slices(0).tolist() == [3, 11, 12, 19]
    assert sparse.slices_per_id(0)[1:].tolist() == [2, 2, 1]
    assert sparse.top_id == 3 and sparse.labelled == 172


def test_summary_reports_all_phases_and_rejects_bad_ids() -> None:
    s = summarize_labels(np.zeros((2, 3, 4), np.uint8), n_ids=5)
    assert s.voxels.tolist() == [24, 0, 0, 0, 0, 0] and s.top_id == 0 and s.slices(1).size == 0
    with pytest.raises(ValueError, match="integer ids"):
        summarize_labels(np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="3D"):
        summarize_labels(np.zeros((2, 2), np.uint8))


def test_store_round_trip_metadata_and_refusals(tmp_path) -> None:
    path = tmp_path / "ann.zarr"
    store = create_store(path, (4, 8, 8), phases=COMPOSITE_PHASES, voxel_size=(2.0, 1.0, 1.0))
    store[1, 2, 3] = 2
    assert is_store(path, "labels") and not is_store(path, "volume")
    assert io.read_label_phases(path) == COMPOSITE_PHASES
    assert io.read_voxel_size(path) == (2.0, 1.0, 1.0)
    again = open_store(path, shape=(4, 8, 8))
    assert again[1, 2, 3] == 2
    set_store_phases(again, PhaseTable.from_names(["pore", "solid"]))
    assert store_phases(open_store(path)).names == ("pore", "solid")
    assert zarr.open_array(str(path))[1, 2, 3] == 2  # a plain zarr array
    with pytest.raises(FileExistsError):
        create_store(path, (4, 8, 8))
    with pytest.raises(ValueError, match="another volume"):
        open_store(path, shape=(4, 8, 9))
    foreign = tmp_path / "foreign.zarr"
    zarr.create_array(store=str(foreign), shape=(2, 2, 2), dtype=np.uint8)
    assert not is_store(foreign)
    with pytest.raises(ValueError, match="not a napari-tomoseg"):
        open_store(foreign)
    assert not is_store(tmp_path / "missing.zarr")


def test_in_memory_limit(monkeypatch) -> None:
    monkeypatch.delenv("NAPARI_TOMOSEG_IN_MEMORY_LIMIT", raising=False)
    assert not needs_store((512, 512, 512)) and needs_store((2048, 2048, 2048))
    monkeypatch.setenv("NAPARI_TOMOSEG_IN_MEMORY_LIMIT", "1000")
    assert in_memory_limit() == 1000 and needs_store((10, 10, 11)) and not needs_store((10, 10, 10))
    monkeypatch.setenv("NAPARI_TOMOSEG_IN_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match="number of voxels"):
        in_memory_limit()
