"""Streaming ``tomoseg segment``: zarr/HDF5/TIFF in, zarr out, memory budget, uncertainty, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from napari_tomoseg.cli import main
from napari_tomoseg.core import io
from napari_tomoseg.core.phases import COMPOSITE_PHASES


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    argv = ["synth", "-o", str(d / "vol.zarr"), "--labels", str(d / "truth.zarr")]
    assert main([*argv, "--shape", "12", "72", "80", "--seed", "4"]) == 0
    return d


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_zarr_in_zarr_out_is_a_plain_array_matching_in_memory_segmentation(phantom, tmp_path):
    out = tmp_path / "labels.zarr"
    argv = ["segment", str(phantom / "vol.zarr"), "-o", str(out), "--memory", "1GB"]
    assert main([*argv, "--tile", "32", "--overlap", "8", "--device", "cpu"]) == 0
    arr = zarr.open_array(str(out))
    assert arr.shape == (12, 72, 80) and arr.dtype == np.uint8
    assert tuple(arr.metadata.dimension_names) == ("z", "y", "x")
    assert io.read_label_phases(out) == COMPOSITE_PHASES
    # same labels as segmenting the in-memory volume
    from napari_tomoseg.core.model import bundled_model_path, load_model
    from napari_tomoseg.core.segment import InferenceConfig, segment_volume

    vol = io.read_volume(phantom / "vol.zarr")
    ref = segment_volume(
        vol, load_model(bundled_model_path()), InferenceConfig(tile=32, overlap=8, device="cpu")
    ).labels
    np.testing.assert_array_equal(arr[...], ref)
    truth = zarr.open_array(str(phantom / "truth.zarr"))[...]
    assert (arr[...] == truth).mean() > 0.9
    assert _hidden(tmp_path) == []


def test_uncertainty_map_streams_beside_the_labels(phantom, tmp_path):
    out, unc = tmp_path / "labels.tif", tmp_path / "unc.zarr"
    argv = ["segment", str(phantom / "vol.zarr"), "-o", str(out), "--uncertainty", str(unc)]
    assert main([*argv, "--tile", "32", "--overlap", "8", "--device", "cpu"]) == 0
    u = zarr.open_array(str(unc))[...]
    labels = io.read_volume(out)
    assert u.dtype == np.uint8 and u.shape == labels.shape
    # uncertain voxels are rare and concentrated on phase boundaries
    assert 0 < u.mean() < 64 and u.max() > 100
    edges = np.zeros(labels.shape, bool)
    edges[:, 1:, :] |= labels[:, 1:, :] != labels[:, :-1, :]
    edges[:, :, 1:] |= labels[:, :, 1:] != labels[:, :, :-1]
    assert u[edges].mean() > 3 * u[~edges].mean()
    assert _visible(tmp_path) == ["labels.tif", "unc.zarr"] and _hidden(tmp_path) == []


def test_hdf5_input_with_several_datasets_needs_dataset(phantom, tmp_path, fails):
    h5py = pytest.importorskip("h5py")
    vol = io.read_volume(phantom / "vol.zarr")
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=vol, chunks=(4, 72, 80))
        f.create_dataset("other", data=vol[:, :8, :8])
    out = tmp_path / "labels.zarr"
    fails(["segment", str(path), "-o", str(out)], "--dataset")
    assert not out.exists()
    argv = ["segment", str(path), "--dataset", "raw", "-o", str(out), "--tile", "32"]
    assert main([*argv, "--device", "cpu"]) == 0
    assert zarr.open_array(str(out)).shape == vol.shape


def test_memory_budget_too_small_names_the_minimum(phantom, tmp_path, fails):
    out = tmp_path / "labels.zarr"
    fails(
        ["segment", str(phantom / "vol.zarr"), "-o", str(out), "--memory", "100MB"],
        "at least",
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []
    fails(
        ["segment", str(phantom / "vol.zarr"), "-o", str(out), "--memory", "lots"],
        "2GB",
    )


def test_pathological_chunking_is_rechunked_with_a_warning(phantom, tmp_path, caplog):
    vol = io.read_volume(phantom / "vol.zarr")[:4, :24, :24]
    src = tmp_path / "tiny-chunks.zarr"
    arr = zarr.create_array(store=str(src), shape=vol.shape, dtype=vol.dtype, chunks=(1, 1, 1))
    arr[...] = vol
    out = tmp_path / "labels.zarr"
    with caplog.at_level("WARNING"):
        argv = ["segment", str(src), "-o", str(out), "--tile", "32", "--device", "cpu"]
        assert main(argv) == 0
    assert "far too small" in caplog.text
    assert zarr.open_array(str(out)).shape == vol.shape
    assert _hidden(tmp_path) == []  # the temporary copy is gone


def test_interrupted_run_leaves_nothing_that_looks_complete(phantom, tmp_path, monkeypatch):
    from napari_tomoseg._cli import segment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segment, "run_plan", interrupted)
    out = tmp_path / "labels.zarr"
    assert main(["segment", str(phantom / "vol.zarr"), "-o", str(out)]) == 130
    assert list(tmp_path.iterdir()) == []
    # an existing output survives an interrupted --overwrite run untouched
    out.mkdir()
    zarr.create_array(store=str(out), shape=(1, 1, 1), dtype=np.uint8)
    argv = ["segment", str(phantom / "vol.zarr"), "-o", str(out), "--overwrite"]
    assert main(argv) == 130
    assert zarr.open_array(str(out)).shape == (1, 1, 1)
    assert _hidden(tmp_path) == []


def test_tiff_folder_input_streams(phantom, tmp_path):
    import tifffile

    vol = io.read_volume(phantom / "vol.zarr")[:5]
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, s in enumerate(vol):
        tifffile.imwrite(folder / f"s{i}.tif", s)
    out = tmp_path / "labels.npy"
    assert main(["segment", str(folder), "-o", str(out), "--tile", "32", "--device", "cpu"]) == 0
    assert np.load(out).shape == vol.shape


def test_local_cluster_output_is_identical_to_single_process(phantom, tmp_path):
    single, dist = tmp_path / "single.zarr", tmp_path / "dist.zarr"
    common = ["--tile", "32", "--overlap", "8", "--device", "cpu", "--memory", "1GB"]
    assert main(["segment", str(phantom / "vol.zarr"), "-o", str(single), *common]) == 0
    argv = ["segment", str(phantom / "vol.zarr"), "-o", str(dist), "--local-cluster", "2"]
    assert main([*argv, *common]) == 0
    np.testing.assert_array_equal(
        zarr.open_array(str(dist))[...], zarr.open_array(str(single))[...]
    )
    assert io.read_label_phases(dist) == COMPOSITE_PHASES


def test_unreachable_scheduler_fails_cleanly(phantom, tmp_path, fails):
    out = tmp_path / "labels.zarr"
    fails(
        ["segment", str(phantom / "vol.zarr"), "-o", str(out), "--scheduler", "tcp://127.0.0.1:1"],
        "cannot reach the dask scheduler",
    )
    assert list(tmp_path.iterdir()) == []


def test_ring_removal_follows_the_model_and_can_be_switched_off(phantom, tmp_path):
    from napari_tomoseg.core.model import bundled_model_path, load_model
    from napari_tomoseg.core.prep.rings import detect_rings
    from napari_tomoseg.core.segment import InferenceConfig, segment_volume

    vol = io.read_volume(phantom / "vol.zarr")
    assert detect_rings(vol).found  # the phantom has rings
    model = load_model(bundled_model_path())
    labels = {}
    for flag, on in (([], True), (["--no-ring-removal"], False)):
        out = tmp_path / f"labels-{on}.zarr"
        argv = ["segment", str(phantom / "vol.zarr"), "-o", str(out), "--device", "cpu", *flag]
        assert main(argv) == 0
        labels[on] = zarr.open_array(str(out))[...]
        ref = segment_volume(vol, model, InferenceConfig(device="cpu", ring_removal=on)).labels
        np.testing.assert_array_equal(labels[on], ref)
    assert (labels[True] != labels[False]).any()


def test_tta_follows_the_model_file_and_the_flags(phantom, tmp_path, capsys):
    import json
    from dataclasses import replace

    from napari_tomoseg.core.model import bundled_model_path, load_model, save_model
    from napari_tomoseg.core.segment import InferenceConfig, segment_volume

    model = load_model(bundled_model_path())
    model.defaults = replace(model.defaults, tta=True)
    model_path = save_model(tmp_path / "tta.safetensors", model)
    capsys.readouterr()
    assert main(["info", str(model_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["inference_defaults"]["tta"] is True
    vol = io.read_volume(phantom / "vol.zarr")
    common = ["--tile", "32", "--overlap", "8", "--device", "cpu"]
    labels = {}
    for name, flags, on in (
        ("model", ["--model", str(model_path)], True),
        ("no-tta", ["--model", str(model_path), "--no-tta"], False),
        ("bundled", ["--tta"], True),
    ):
        out = tmp_path / f"labels-{name}.zarr"
        assert main(["segment", str(phantom / "vol.zarr"), "-o", str(out), *common, *flags]) == 0
        assert ("test-time augmentation" in capsys.readouterr().out) is on
        labels[name] = zarr.open_array(str(out))[...]
    config = InferenceConfig(tile=32, overlap=8, device="cpu", tta=True)
    np.testing.assert_array_equal(labels["model"], segment_volume(vol, model, config).labels)
    np.testing.assert_array_equal(labels["bundled"], labels["model"])
    plain = segment_volume(vol, model, replace(config, tta=False)).labels
    np.testing.assert_array_equal(labels["no-tta"], plain)
    assert (labels["no-tta"] != labels["model"]).any()
