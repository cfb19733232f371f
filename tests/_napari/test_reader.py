"""The reader: folders of TIFF slices, zarr, HDF5, .npy and TIFF stacks, with their voxel size."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_tomoseg._napari.reader import napari_get_reader
from napari_tomoseg.core import io
from napari_tomoseg.core.phases import COMPOSITE_PHASES


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(0, 60000, size=(6, 20, 24), dtype=np.uint16)


def _read(path):
    reader = napari_get_reader(str(path))
    assert reader is not None, path
    return reader(str(path))


def test_tiff_stack_with_voxel_size(tmp_path, volume):
    path = io.write_volume(tmp_path / "scan.tif", volume, voxel_size=(2.0, 1.5, 1.5))
    [(data, meta, kind)] = _read(path)
    assert kind == "image" and meta["name"] == "scan"
    np.testing.assert_array_equal(np.asarray(data), volume)
    assert meta["scale"] == pytest.approx((2.0, 1.5, 1.5))
    assert meta["metadata"]["source_path"] == str(path)


def test_folder_of_slices_is_lazy(tmp_path, volume):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, s in enumerate(volume):
        tifffile.imwrite(folder / f"img{i}.tif", s)
    [(data, meta, _kind)] = _read(folder)
    import dask.array as da

    assert isinstance(data, da.Array) and data.chunksize == (1, 20, 24)
    np.testing.assert_array_equal(np.asarray(data[3]), volume[3])
    assert "scale" not in meta  # slices carry no z spacing: napari's default (1, 1, 1)


def test_zarr_and_npy_and_hdf5(tmp_path, volume):
    z = io.write_volume(tmp_path / "vol.zarr", volume, voxel_size=(1.3, 1.3, 1.3))
    [(data, meta, _)] = _read(z)
    assert meta["name"] == "vol" and meta["scale"] == pytest.approx((1.3,) * 3)
    np.testing.assert_array_equal(np.asarray(data), volume)
    n = tmp_path / "vol.npy"
    np.save(n, volume)
    [(data, meta, _)] = _read(n)
    np.testing.assert_array_equal(np.asarray(data), volume)
    import h5py

    h = tmp_path / "vol.h5"
    with h5py.File(h, "w") as f:
        f["data"] = volume
    [(data, meta, _)] = _read(h)
    np.testing.assert_array_equal(np.asarray(data), volume)


def test_label_file_opens_as_labels_with_phases(tmp_path):
    labels = np.zeros((4, 8, 8), np.uint8)
    labels[1, 2:4, 2:4] = 3
    path = io.write_labels(tmp_path / "pred.tif", labels, phases=COMPOSITE_PHASES)
    [(data, meta, kind)] = _read(path)
    assert kind == "labels"
    np.testing.assert_array_equal(data, labels)
    assert list(meta["features"]["phase"]) == ["none", "matrix", "fibre", "pore"]


def test_what_it_does_not_claim(tmp_path, volume):
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert napari_get_reader(str(empty)) is None
    assert napari_get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None


def test_bad_volume_gives_a_clear_error(tmp_path):
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="2D image"):
        _read(path)


def test_viewer_opens_with_the_plugin(make_napari_viewer, tmp_path, volume):
    path = io.write_volume(tmp_path / "scan.zarr", volume, voxel_size=(2.0, 1.0, 1.0))
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-tomoseg")
    assert layers[0].name == "scan" and layers[0].scale.tolist() == [2.0, 1.0, 1.0]


def test_ome_zarr_with_levels_opens_as_a_lazy_multiscale_image(tmp_path):
    import dask.array as da
    import zarr

    rng = np.random.default_rng(1)
    full = rng.integers(0, 255, size=(8, 32, 32), dtype=np.uint8)
    root = zarr.open_group(str(tmp_path / "scan.ome.zarr"), mode="w")
    root.create_array("0", data=full, chunks=(4, 16, 16))
    root.create_array("1", data=full[::2, ::2, ::2], chunks=(4, 16, 16))
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2, 1, 1]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [4, 2, 2]}]},
            ],
        }
    ]
    [(data, meta, kind)] = _read(tmp_path / "scan.ome.zarr")
    assert kind == "image" and meta["multiscale"] is True
    assert [d.shape for d in data] == [(8, 32, 32), (4, 16, 16)]
    assert all(isinstance(d, da.Array) for d in data)
    np.testing.assert_array_equal(np.asarray(data[0][3]), full[3])
    assert meta["scale"] == pytest.approx((2.0, 1.0, 1.0))
