"""The manifest writer: napari's Save Layer writes a label TIFF with phase names and voxel size."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tomoseg._napari.layers import apply_phases
from napari_tomoseg._napari.writer import napari_write_labels, voxel_size_um
from napari_tomoseg.core import io
from napari_tomoseg.core.phases import COMPOSITE_PHASES


def test_save_labels_layer_through_napari(make_napari_viewer, small_phantom, tmp_path):
    _, truth = small_phantom
    viewer = make_napari_viewer()
    layer = viewer.add_labels(truth, name="truth", scale=(2.0, 0.5, 0.5))
    apply_phases(layer, COMPOSITE_PHASES)
    written = layer.save(str(tmp_path / "truth.tif"), plugin="napari-tomoseg")
    assert written == [str(tmp_path / "truth.tif")]
    np.testing.assert_array_equal(io.read_labels(tmp_path / "truth.tif"), truth)
    assert io.read_label_phases(tmp_path / "truth.tif") == COMPOSITE_PHASES
    assert io.read_voxel_size(tmp_path / "truth.tif") == pytest.approx((2.0, 0.5, 0.5))


def test_writer_without_phase_table_and_units(tmp_path):
    labels = np.zeros((2, 3, 4), dtype=np.int32)
    labels[1] = 5
    out = napari_write_labels(
        str(tmp_path / "x.tiff"), labels, {"scale": (1.0, 1.0, 1.0), "metadata": {}}
    )
    assert out == [str(tmp_path / "x.tiff")]
    np.testing.assert_array_equal(io.read_labels(out[0]), labels)
    assert io.read_label_phases(out[0]) is None and io.read_voxel_size(out[0]) is None


def test_writer_refuses_ids_outside_the_table_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "x.tif"
    target.write_bytes(b"old")
    labels = np.full((2, 3, 4), 4, dtype=np.uint8)
    attrs = {"scale": (1, 1, 1), "metadata": {"tomoseg_phases": COMPOSITE_PHASES.to_json()}}
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        napari_write_labels(str(target), labels, attrs)
    assert target.read_bytes() == b"old"


def test_voxel_size_units():
    assert voxel_size_um((1.3, 1.3, 1.3)) == pytest.approx((1.3, 1.3, 1.3))
    assert voxel_size_um((1, 1, 1)) is None
    assert voxel_size_um((2, 3, 4), ("nm", "nm", "mm")) == pytest.approx((0.002, 0.003, 4000))
    assert voxel_size_um((1, 1, 1), ("pixel", "pixel", "pixel")) is None
