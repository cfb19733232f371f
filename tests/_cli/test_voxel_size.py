"""``--voxel-size`` of ``tomoseg segment`` and ``tomoseg train``: written into the outputs, bad
values refused in one line before any work; ``--threads`` goes through the core's choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_tomoseg.cli import main
from napari_tomoseg.core import io


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("voxel")
    argv = ["synth", "-o", str(d / "vol.tif"), "--labels", str(d / "truth.tif")]
    assert main([*argv, "--shape", "8", "48", "48", "--seed", "3"]) == 0
    return d


SEGMENT_FAST = ("--tile", "32", "--overlap", "8", "--device", "cpu", "--threads", "1")


def test_segment_writes_the_given_voxel_size_into_the_labels(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "labels.tif"
    argv = ["segment", str(data / "vol.tif"), "-o", str(out), "--voxel-size", "0.5,0.65,0.65 nm"]
    assert main([*argv, *SEGMENT_FAST]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(info["voxel_size"], [0.0005, 0.00065, 0.00065])
    # ImageJ readers see it too: spacing (z) and resolution (y, x) in µm
    import tifffile

    with tifffile.TiffFile(out) as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.0005)
        assert tif.imagej_metadata["unit"] in ("um", "micron", "\\u00B5m", "µm")
        x_res = tif.pages[0].tags["XResolution"].value
        assert x_res[1] / x_res[0] == pytest.approx(0.00065)


def test_segment_without_the_option_keeps_the_volumes_own(data: Path, tmp_path: Path) -> None:
    vol = tmp_path / "vol.tif"
    io.write_volume(vol, io.read_volume(data / "vol.tif"), voxel_size=(2.0, 1.3, 1.3))
    out = tmp_path / "labels.zarr"
    assert main(["segment", str(vol), "-o", str(out), *SEGMENT_FAST]) == 0
    assert io.read_voxel_size(out) == pytest.approx((2.0, 1.3, 1.3))
    # the option overrides the file's
    out2 = tmp_path / "labels2.zarr"
    assert main(["segment", str(vol), "-o", str(out2), "--voxel-size", "0.65", *SEGMENT_FAST]) == 0
    assert io.read_voxel_size(out2) == pytest.approx((0.65, 0.65, 0.65))


def test_train_records_the_voxel_size_in_the_model(data: Path, tmp_path: Path) -> None:
    from napari_tomoseg.core.model import load_model

    model = tmp_path / "m.safetensors"
    argv = ["train", str(data / "vol.tif"), "-a", str(data / "truth.tif"), "-o", str(model)]
    assert main([*argv, "--steps", "1", "--device", "cpu", "--voxel-size", "1.3um"]) == 0
    assert load_model(model).provenance["voxel_size_um"] == pytest.approx([1.3, 1.3, 1.3])


@pytest.mark.parametrize(
    ("command", "value", "match"),
    [
        ("segment", "abc", "cannot read the voxel size 'abc'"),
        ("segment", "0", "must be positive and finite"),
        ("segment", "-1.3", "must be positive and finite"),
        ("segment", "1,2", "has 2 numbers"),
        ("segment", "1.3 parsecs", "unknown unit"),
        ("train", "abc", "cannot read the voxel size 'abc'"),
        ("train", "0,1,1", "must be positive and finite"),
    ],
)
def test_a_bad_voxel_size_is_one_line_and_writes_nothing(
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    value: str,
    match: str,
) -> None:
    if command == "segment":
        argv = ["segment", str(data / "vol.tif"), "-o", str(tmp_path / "l.tif")]
    else:
        argv = ["train", str(data / "vol.tif"), "-a", str(data / "truth.tif")]
        argv += ["-o", str(tmp_path / "m.safetensors"), "--steps", "1"]
    assert main([*argv, f"--voxel-size={value}"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("tomoseg: error: --voxel-size: ") and match in err
    assert list(tmp_path.iterdir()) == []


def test_threads_option_sets_torchs_count(data: Path, tmp_path: Path) -> None:
    import torch

    before = torch.get_num_threads()
    try:
        out = tmp_path / "l.tif"
        assert main(["segment", str(data / "vol.tif"), "-o", str(out), *SEGMENT_FAST]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
