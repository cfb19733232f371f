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


def test_contrast_limits_follow_the_grey_values_not_the_dtype(make_napari_viewer, tmp_path):
    # A scan that uses 71..189 of uint8's 0..255 is shown with that range, not black-grey.
    rng = np.random.default_rng(2)
    scan = rng.integers(71, 190, size=(12, 40, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "narrow.tif", scan)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "narrow.tif"), plugin="napari-tomoseg")
    lo, hi = layer.contrast_limits
    assert 71 <= lo <= 75 and 185 <= hi <= 189


def test_contrast_limits_read_only_a_few_slices_of_a_big_volume():
    from napari_tomoseg._napari.reader import CONTRAST_SLICES, contrast_range

    class Counting:
        """A volume that counts the slices read and the voxels handed out."""

        shape = (400, 300, 300)
        dtype = np.dtype(np.uint16)

        def __init__(self):
            self.slices, self.voxels = [], 0

        def __getitem__(self, key):
            z, *plane = key
            self.slices.append(z)
            block = np.full(self.shape[1:], 1000 + z, np.uint16)[tuple(plane)]
            self.voxels += block.size
            return block

    vol = Counting()
    lo, hi = contrast_range(vol)
    assert len(vol.slices) == CONTRAST_SLICES and vol.voxels <= 1_100_000
    assert 1000 <= lo < hi <= 1399


def test_constant_or_nan_sample_leaves_contrast_to_napari():
    from napari_tomoseg._napari.reader import contrast_range

    assert contrast_range(np.full((4, 8, 8), 7, np.uint8)) is None
    assert contrast_range(np.full((4, 8, 8), np.nan, np.float32)) is None
    assert contrast_range(np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)) is not None


def test_session_preference_keeps_the_users_saved_choice(tmp_path):
    # In a fresh interpreter, as `tomoseg gui` runs: the user's saved choice for .tif stays, the other
    # endings open with napari-tomoseg without a dialog, and the settings file is not changed.
    import subprocess
    import sys

    config = tmp_path / "settings.yaml"
    config.write_text("plugins:\n  extension2reader:\n    '*.tif': napari\n")
    before = config.read_text()
    script = (
        "from napari_tomoseg._napari.reader import prefer_for_session\n"
        "added = prefer_for_session()\n"
        "from napari.settings import get_settings\n"
        "prefs = get_settings().plugins.extension2reader\n"
        "get_settings().appearance.theme = 'light'\n"  # any change makes napari save its settings
        "print(sorted(added), prefs['*.tif'], prefs['*.npy'])\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("NAPARI_PLUGINS")}
    env["NAPARI_CONFIG"] = str(config)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")[-2]
    assert out == ("['*.h5', '*.hdf5', '*.npy', '*.tiff', '*.zarr/'] napari napari-tomoseg"), out
    saved = config.read_text()
    assert "napari-tomoseg" not in saved and "'*.tif': napari" in saved and "light" in saved
    assert before.splitlines()[-1] in saved
