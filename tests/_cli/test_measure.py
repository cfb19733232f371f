"""``tomoseg measure``: known values on hand-made label volumes, JSON, CSV files, and bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import zarr

from napari_tomoseg import __version__
from napari_tomoseg.cli import main
from napari_tomoseg.core import io
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable

PORES = PhaseTable.from_names(["solid", "pore"])


def _layers():
    """Labels (12, 10, 8) of the composite phases with known counts: 1 matrix, 2 fibre, 3 pore."""
    lab = np.ones((12, 10, 8), np.uint8)
    lab[:, 2:5, 2:5] = 2  # a fibre along z: 12 * 9 = 108 voxels
    lab[3:5, 7:9, 5:7] = 3  # a pore: 8 voxels
    lab[0] = 0  # unlabelled slice
    return lab


@pytest.fixture
def labels_tif(tmp_path):
    path = tmp_path / "labels.tif"
    io.write_labels(path, _layers(), phases=COMPOSITE_PHASES, voxel_size=(2.0, 1.0, 1.0))
    return path


def _run_json(capsys, argv):
    capsys.readouterr()
    assert main(["measure", *map(str, argv), "--json"]) == 0
    out = capsys.readouterr().out
    assert "NaN" not in out and "Infinity" not in out
    return json.loads(out)


def test_fractions_are_exact_label_counts_in_um(labels_tif, capsys):
    lab = _layers()
    res = _run_json(capsys, [labels_tif, "--what", "fractions,profile"])
    counts = np.bincount(lab.ravel(), minlength=4)
    rows = {r["phase"]: r for r in res["fractions"]["phases"]}
    for p in COMPOSITE_PHASES.phases:
        assert rows[p.name]["voxels"] == counts[p.id]
        assert rows[p.name]["fraction"] == counts[p.id] / counts[1:].sum()  # unrounded
        # voxel size (2, 1, 1) µm read from the file: 2 µm³ per voxel
        assert rows[p.name]["volume (µm³)"] == pytest.approx(2.0 * counts[p.id])
    assert res["units"]["voxel_size"] == [2.0, 1.0, 1.0] and res["units"]["length"] == "µm"
    prof = res["profile"]
    assert prof["axis"] == "z" and len(prof["position"]) == 12
    assert prof["position"][1] == pytest.approx(3.0)  # centre of slice 1 at 2 µm per slice
    assert prof["fractions"]["matrix"][0] is None  # the unlabelled slice: null, not NaN
    assert prof["fractions"]["pore"][3] == pytest.approx(4 / 80)
    assert res["objects"] is None and res["orientation"] is None  # not asked for


def test_profile_along_x_in_slabs(labels_tif, capsys):
    lab = _layers()
    res = _run_json(capsys, [labels_tif, "--what", "profile", "--axis", "x", "--slab", "3"])
    prof = res["profile"]
    assert prof["start"] == [0, 3, 6] and prof["stop"] == [3, 6, 8]
    fibre = [
        ((lab[..., a:b] == 2).sum() / (lab[..., a:b] > 0).sum())
        for a, b in ((0, 3), (3, 6), (6, 8))
    ]
    assert prof["fractions"]["fibre"] == pytest.approx(fibre)
    assert res["fractions"] is None  # only the profile was asked for


def test_sphere_equivalent_diameter_and_thickness(tmp_path, capsys):
    r = 8
    zz, yy, xx = np.indices((25, 25, 25)) - 12
    lab = np.where(zz**2 + yy**2 + xx**2 <= r * r, 2, 1).astype(np.uint8)
    path = tmp_path / "ball.npy"
    np.save(path, lab)
    res = _run_json(
        capsys,
        [path, "--voxel-size", "0.5um", "--what", "objects,thickness", "--phase", "phase 2"],
    )
    assert res["units"]["voxel_size"] == [0.5, 0.5, 0.5]
    assert res["measured_phases"] == ["phase 2"]
    (ball,) = res["objects"]["phase 2"]["objects"]
    assert ball["equivalent diameter (µm)"] == pytest.approx(2 * r * 0.5, rel=0.05)
    assert ball["touches border"] is False
    # the largest inscribed sphere is the ball itself, within one voxel (0.5 µm)
    assert res["thickness"]["phase 2"]["maximum"] == pytest.approx(2 * r * 0.5, abs=0.5)
    assert "phase 1" not in res["objects"]  # only the phase asked for


def test_orientation_of_the_fibre_phase_as_3x3_lists(labels_tif, capsys):
    res = _run_json(capsys, [labels_tif, "--what", "orientation"])
    assert list(res["orientation"]) == ["fibre"]  # the phase named fibre, by default
    t = np.array(res["orientation"]["fibre"]["tensor"])
    assert t.shape == (3, 3) and np.trace(t) == pytest.approx(1.0)
    assert t[0, 0] > 0.9  # the fibre runs along z: a_zz, the first entry of (z, y, x)
    blocks = res["orientation"]["fibre"]["blocks"]
    assert all(np.shape(b["tensor"]) == (3, 3) for b in blocks)


def test_empty_phase_is_reported_empty_not_nan(tmp_path, capsys):
    lab = _layers()
    lab[lab == 3] = 1  # no pore left
    path = tmp_path / "nopore.tif"
    io.write_labels(path, lab, phases=COMPOSITE_PHASES)
    res = _run_json(capsys, [path, "--phase", "pore", "--what", "objects,thickness,orientation"])
    assert res["objects"]["pore"]["count"] == 0 and "empty" in res["objects"]["pore"]["note"]
    assert res["thickness"]["pore"]["mean"] is None and "empty" in res["thickness"]["pore"]["note"]
    # a phase named fibre exists, so the orientation is the fibre's, whatever --phase says
    assert list(res["orientation"]) == ["fibre"]
    capsys.readouterr()
    assert main(["measure", str(path), "--phase", "pore", "--what", "objects"]) == 0
    text = capsys.readouterr().out
    assert "empty" in text and "nan" not in text.lower()


def test_orientation_of_the_given_phase_without_a_fibre_phase(tmp_path, capsys):
    path = tmp_path / "solid.tif"
    io.write_labels(path, np.ones((8, 9, 10), np.uint8), phases=PORES)  # no pore at all
    res = _run_json(capsys, [path, "--what", "orientation", "--phase", "pore"])
    pore = res["orientation"]["pore"]
    assert pore["voxels"] == 0 and "empty" in pore["note"]
    assert pore["tensor"] == [[None] * 3] * 3  # null, not NaN
    res = _run_json(capsys, [path, "--what", "orientation"])
    assert res["orientation"] == {} and any("no phase named 'fibre'" in n for n in res["notes"])


def test_without_voxel_size_lengths_are_in_voxels_and_it_says_so(tmp_path, capsys):
    path = tmp_path / "plain.npy"
    np.save(path, _layers())
    capsys.readouterr()
    assert main(["measure", str(path), "--what", "fractions,surface"]) == 0
    out = capsys.readouterr().out
    assert "lengths in voxels" in out and "voxel³" in out and "µm" not in out
    res = _run_json(capsys, [path, "--what", "fractions"])
    assert res["units"]["voxel_size"] is None and res["units"]["length"] == "voxel"
    assert any("voxel" in n for n in res["notes"])
    assert [p["name"] for p in res["phases"]] == ["phase 1", "phase 2", "phase 3"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5", [1.5] * 3),
        ("1.5um", [1.5] * 3),
        ("2,1.3,1.3µm", [2.0, 1.3, 1.3]),
        ("0.5 mm", [500.0] * 3),
    ],
)
def test_voxel_size_option_overrides_the_file(labels_tif, capsys, text, expected):
    res = _run_json(capsys, [labels_tif, "--what", "fractions", "--voxel-size", text])
    assert res["units"]["voxel_size"] == pytest.approx(expected)


def test_csv_files_have_a_header_and_the_rows(labels_tif, tmp_path, capsys):
    out = tmp_path / "measures"
    capsys.readouterr()
    assert main(["measure", str(labels_tif), "--csv", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"labels_{m}.csv"
        for m in ("fractions", "profile", "objects", "thickness", "orientation", "surface")
    )
    text = (out / "labels_fractions.csv").read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[0] == f"# napari-tomoseg {__version__}: fractions"
    assert any(str(labels_tif) in line for line in header)
    assert any("1 = matrix, 2 = fibre, 3 = pore" in line for line in header)
    assert any("µm" in line and "2.0, 1.0, 1.0" in line for line in header)
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    counts = np.bincount(_layers().ravel(), minlength=4)
    assert [r["phase"] for r in rows] == ["matrix", "fibre", "pore"]
    assert [int(r["voxels"]) for r in rows] == counts[1:].tolist()
    assert float(rows[2]["fraction"]) == counts[3] / counts[1:].sum()
    assert "volume (µm³)" in rows[0]
    prof = (out / "labels_profile.csv").read_text(encoding="utf-8").splitlines()
    assert sum(not line.startswith("#") for line in prof) == 1 + 12  # header + one row per slice

    # never over an existing file without --overwrite, and nothing else is written either
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    fails = main(["measure", str(labels_tif), "--csv", str(out)])
    assert fails == 1 and {p: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert main(["measure", str(labels_tif), "--csv", str(out), "--overwrite"]) == 0


def test_mask_adds_fractions_inside_it(labels_tif, tmp_path, capsys):
    mask = np.zeros(_layers().shape, np.uint8)
    mask[:6] = 1
    np.save(tmp_path / "mask.npy", mask)
    res = _run_json(capsys, [labels_tif, "--what", "fractions", "--mask", tmp_path / "mask.npy"])
    lab = _layers()
    inside = np.bincount(lab[:6].ravel(), minlength=4)
    rows = {r["phase"]: r for r in res["fractions"]["phases"]}
    assert rows["pore"]["voxels in mask"] == inside[3]
    assert rows["fibre"]["fraction in mask"] == inside[2] / inside[1:].sum()


# bad input: one line, exit 1, nothing written ------------------------------------------------


def test_grey_values_are_refused(tmp_path, fails):
    np.save(tmp_path / "grey.npy", np.random.default_rng(0).random((4, 5, 6), dtype=np.float32))
    fails(["measure", str(tmp_path / "grey.npy")], "not integer phase ids")


def test_ids_missing_from_the_phase_table(tmp_path, fails):
    path = tmp_path / "labels.zarr"
    io.write_labels(path, np.ones((4, 5, 6), np.uint8), phases=PORES)
    zarr.open_array(path, mode="r+")[0, 0, 0] = 5
    out = tmp_path / "out"
    fails(["measure", str(path), "--csv", str(out)], "phase table has ids 1..2")
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "match"),
    [
        (["--voxel-size", "0"], "must be positive"),
        (["--voxel-size", "-1.3"], "must be positive"),
        (["--voxel-size", "abc"], "cannot read the voxel size"),
        (["--voxel-size", "1,2"], "has 2 numbers"),
        (["--axis", "w"], "--axis must be z, y or x"),
        (["--what", "fractions,volume"], "unknown measure 'volume'"),
        (["--what", ","], "no measure named"),
        (["--phase", ""], "empty name"),
        (["--phase", "glass"], "no such phase"),
        (["--connectivity", "8"], "6 or 26"),
        (["--slab", "0"], "--slab"),
    ],
)
def test_bad_options(labels_tif, tmp_path, fails, option, match):
    out = tmp_path / "out"
    fails(["measure", str(labels_tif), *option, "--csv", str(out)], match)
    assert not out.exists()


def test_image_and_mask_of_another_shape(labels_tif, tmp_path, fails):
    np.save(tmp_path / "small.npy", np.random.default_rng(0).integers(0, 200, (4, 5, 6), np.uint8))
    fails(["measure", str(labels_tif), "--image", str(tmp_path / "small.npy")], "differ in shape")
    fails(["measure", str(labels_tif), "--mask", str(tmp_path / "small.npy")], "differ in shape")


def test_csv_never_written_into_the_input(tmp_path, fails):
    path = tmp_path / "labels.zarr"
    io.write_labels(path, _layers(), phases=COMPOSITE_PHASES)
    fails(["measure", str(path), "--csv", str(path / "csv")], "inside the input")
    assert not (path / "csv").exists()


def test_grey_image_given_as_labels(tmp_path, fails):
    np.save(tmp_path / "grey.npy", np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6))
    fails(["measure", str(tmp_path / "grey.npy")], "grey image")
