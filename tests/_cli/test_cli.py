"""The tomoseg command: happy paths and every bad input (one-line error, exit 1, no output left)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_tomoseg.cli import main
from napari_tomoseg.core import io
from napari_tomoseg.core.phases import COMPOSITE_PHASES


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    d = tmp_path_factory.mktemp("phantom")
    assert (
        main(
            [
                "synth",
                "-o",
                str(d / "vol.tif"),
                "--labels",
                str(d / "truth.tif"),
                "--shape",
                "8",
                "64",
                "64",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    return d


def test_synth_writes_volume_and_truth(phantom):
    vol = io.read_volume(phantom / "vol.tif")
    assert vol.shape == (8, 64, 64) and vol.dtype == np.uint8
    assert io.read_label_phases(phantom / "truth.tif") == COMPOSITE_PHASES
    assert set(np.unique(io.read_volume(phantom / "truth.tif"))) <= {1, 2, 3}


def test_synth_domain_options_change_the_volume(tmp_path, phantom):
    assert (
        main(
            [
                "synth",
                "-o",
                str(tmp_path / "v.tif"),
                "--labels",
                str(tmp_path / "t.tif"),
                "--shape",
                "8",
                "64",
                "64",
                "--seed",
                "3",
                "--noise",
                "0.4",
                "--contrast",
                "0.2",
            ]
        )
        == 0
    )
    a, b = io.read_volume(phantom / "vol.tif"), io.read_volume(tmp_path / "v.tif")
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(
        io.read_volume(phantom / "truth.tif"), io.read_volume(tmp_path / "t.tif")
    )


def test_segment_and_evaluate(phantom, tmp_path, capsys):
    out = tmp_path / "pred.tif"
    assert main(["segment", str(phantom / "vol.tif"), "-o", str(out), "--threads", "2"]) == 0
    assert "Mvox/s" in capsys.readouterr().out
    pred = io.read_volume(out)
    assert pred.shape == (8, 64, 64) and pred.dtype == np.uint8
    assert io.read_label_phases(out) == COMPOSITE_PHASES
    assert main(["evaluate", str(out), str(phantom / "truth.tif"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["per_phase"]) == {"matrix", "fibre", "pore"}
    assert report["per_phase"]["matrix"] > 0.9  # the bundled model really segments
    assert main(["evaluate", str(out), str(phantom / "truth.tif")]) == 0
    table = capsys.readouterr().out
    assert "matrix" in table and "mean" in table


def test_evaluate_known_values(tmp_path, capsys):
    ref = np.ones((2, 4, 4), np.uint8)
    ref[:, :2] = 2
    pred = ref.copy()
    pred[0, 0, :] = 1  # 4 fibre voxels predicted as matrix
    io.write_labels(tmp_path / "p.tif", pred, phases=COMPOSITE_PHASES)
    io.write_labels(tmp_path / "r.tif", ref)
    assert main(["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "r.tif"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["per_phase"]["matrix"] == pytest.approx(16 / 20)
    assert rep["per_phase"]["fibre"] == pytest.approx(12 / 16)
    assert rep["per_phase"]["pore"] is None


def test_evaluate_with_image_adds_the_baseline_fractions_and_confusion(tmp_path, capsys, fails):
    ref = np.ones((2, 4, 4), np.uint8)
    ref[:, :2] = 2
    pred = ref.copy()
    pred[0, 0, :] = 1  # 4 fibre voxels predicted as matrix
    image = np.where(ref == 2, 200, 50).astype(np.uint8)  # grey levels separate the phases
    io.write_labels(tmp_path / "p.tif", pred, phases=COMPOSITE_PHASES)
    io.write_labels(tmp_path / "r.tif", ref)
    io.write_volume(tmp_path / "v.tif", image)
    argv = ["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "r.tif")]
    assert main([*argv, "--image", str(tmp_path / "v.tif"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["jaccard"]["matrix"] == pytest.approx(16 / 20) and rep["jaccard"]["pore"] is None
    assert rep["grey_level_baseline"]["jaccard"] == {"matrix": 1.0, "fibre": 1.0, "pore": None}
    assert rep["confusion_matrix"]["counts"]["fibre"] == [0, 4, 12, 0]
    assert rep["prediction_fractions"]["fibre"] == pytest.approx(12 / 32)
    assert main([*argv, "--image", str(tmp_path / "v.tif")]) == 0
    text = capsys.readouterr().out
    for words in ("Jaccard grey-level", "fraction (prediction)", "confusion matrix", "37.50 %"):
        assert words in text, words
    np.save(tmp_path / "small.npy", image[:1])
    fails([*argv, "--image", str(tmp_path / "small.npy")], "differ in shape")


def test_segment_refuses_existing_output_and_keeps_it(phantom, tmp_path, fails):
    out = tmp_path / "pred.tif"
    out.write_bytes(b"precious")
    fails(["segment", str(phantom / "vol.tif"), "-o", str(out)], "--overwrite")
    assert out.read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros((64, 64), np.uint8) + np.arange(64, dtype=np.uint8), "2D"),
        (np.zeros((2, 3, 8, 8), np.uint8), "4D"),
        (np.full((4, 16, 16), 9, np.uint8), "nothing to segment"),
        (
            np.where(np.eye(16, dtype=bool)[None].repeat(4, 0), np.nan, 1.0).astype(np.float32),
            "NaN",
        ),
        (np.zeros((2, 8, 8, 3), np.uint8), "RGB"),
    ],
)
def test_segment_bad_volumes(array, match, tmp_path, fails):
    src = tmp_path / "bad.npy"
    np.save(src, array)
    out = tmp_path / "out.tif"
    fails(["segment", str(src), "-o", str(out)], match)
    assert not out.exists()


def test_segment_other_bad_inputs(phantom, tmp_path, fails):
    vol = str(phantom / "vol.tif")
    fails(
        ["segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o.tif")],
        "missing.tif",
    )
    fails(["segment", vol, "-o", str(tmp_path / "no" / "such" / "o.tif")], "does not exist")
    fails(
        [
            "segment",
            vol,
            "-o",
            str(tmp_path / "o.tif"),
            "--model",
            str(tmp_path / "nope.safetensors"),
        ],
        "nope.safetensors",
    )
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 100)
    fails(
        ["segment", vol, "-o", str(tmp_path / "o.tif"), "--model", str(corrupt)],
        "corrupt.safetensors",
    )
    fails(["segment", vol, "-o", str(tmp_path / "o.tif"), "--tile", "4"], "at least 8")
    fails(["segment", vol, "-o", str(tmp_path / "o.tif"), "--mode", "3d"], "3D model")
    assert not list(tmp_path.glob("o.tif*"))


def test_evaluate_bad_inputs(phantom, tmp_path, fails):
    io.write_labels(tmp_path / "small.tif", np.ones((2, 4, 4), np.uint8))
    fails(["evaluate", str(tmp_path / "small.tif"), str(phantom / "truth.tif")], "shape")
    bad = np.ones((2, 4, 4), np.uint8)
    bad[0, 0, 0] = 7
    io.write_labels(tmp_path / "seven.tif", bad)
    io.write_labels(tmp_path / "pred.tif", np.ones((2, 4, 4), np.uint8), phases=COMPOSITE_PHASES)
    fails(["evaluate", str(tmp_path / "pred.tif"), str(tmp_path / "seven.tif")], "[7]")


def test_info_model_and_volume(phantom, capsys):
    assert main(["info", str(phantom / "vol.tif"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [8, 64, 64] and info["dtype"] == "uint8"
    from napari_tomoseg.core.model import bundled_model_path

    assert main(["info", str(bundled_model_path()), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "model" and info["architecture"]["ndim"] == 2
    assert [p["name"] for p in info["phases"]] == ["matrix", "fibre", "pore"]
    assert info["parameters"] > 100_000


def test_demo_prints_the_table_and_writes_files(tmp_path, fails, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--shape", "8", "64", "64", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("matrix", "fibre", "pore", "mean", "U-Net", "grey-level"):
        assert word in text
    assert {p.name for p in out.iterdir()} == {"volume.tif", "truth.tif", "prediction.tif"}
    fails(["demo", "--shape", "8", "64", "64", "--output", str(out)], "not empty")


def test_console_script_exit_codes(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_tomoseg.cli",
            "segment",
            str(tmp_path / "x.tif"),
            "-o",
            str(tmp_path / "y.tif"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "x.tif" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "napari_tomoseg.cli", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and "tomoseg" in r.stdout


def test_written_labels_open_in_tifffile_with_phase_names(tmp_path):
    io.write_labels(tmp_path / "l.tif", np.ones((2, 4, 4), np.uint8), phases=COMPOSITE_PHASES)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert "fibre" in json.dumps(tif.imagej_metadata, default=str)
