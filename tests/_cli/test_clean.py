"""``tomoseg clean``: blobs selected by area and aspect ratio move to another phase; bad input fails cleanly."""

import csv

import numpy as np
import pytest

from napari_tomoseg.cli import main
from napari_tomoseg.core import io
from napari_tomoseg.core.phases import COMPOSITE_PHASES

MATRIX, FIBRE, PORE = 1, 2, 3


@pytest.fixture
def labels_file(tmp_path):
    v = np.full((3, 20, 24), MATRIX, dtype=np.uint8)
    v[0, 2:4, 2:4] = PORE  # small round pore: kept
    v[0, 10, 4:20] = PORE  # 1 x 16 streak: a ring artifact
    v[2, 5:8, 4:10] = PORE  # 3 x 6 pore, aspect 2: kept at --min-aspect 3
    v[2, 12:16, 0:24] = FIBRE
    v[2, 11, 2:22] = PORE  # 1 x 20 streak on the edge of a fibre
    path = tmp_path / "pred.tif"
    io.write_labels(path, v, phases=COMPOSITE_PHASES, voxel_size=(2.0, 1.0, 1.0))
    return path, v


def test_clean_moves_streaks_and_keeps_metadata(labels_file, tmp_path, capsys):
    path, v = labels_file
    out = tmp_path / "clean.tif"
    argv = ["clean", str(path), "-o", str(out), "--phase", "pore", "--min-area", "10"]
    assert main([*argv, "--min-aspect", "3", "--to", "matrix"]) == 0
    printed = capsys.readouterr().out
    assert "4 blobs of pore" in printed and "2 selected (36 voxels)" in printed
    cleaned = io.read_labels(out)
    assert (cleaned[0, 10, 4:20] == MATRIX).all() and (cleaned[2, 11, 2:22] == MATRIX).all()
    assert (cleaned[0, 2:4, 2:4] == PORE).all() and (cleaned[2, 5:8, 4:10] == PORE).all()
    assert np.count_nonzero(cleaned != v) == 36
    assert io.read_label_phases(out) == COMPOSITE_PHASES
    assert io.read_voxel_size(out) == pytest.approx((2.0, 1.0, 1.0))


def test_clean_default_takes_the_surrounding_phase_and_ids_work(labels_file, tmp_path):
    path, _ = labels_file
    out = tmp_path / "clean.tif"
    assert main(["clean", str(path), "-o", str(out), "--phase", "3", "--min-aspect", "10"]) == 0
    cleaned = io.read_labels(out)
    assert (cleaned[0, 10, 4:20] == MATRIX).all()
    # The streak on the fibre's edge has 22 fibre pixels below it (8-connected ring) and 22 matrix
    # pixels above plus 2 at its ends: matrix wins.
    assert (cleaned[2, 11, 2:22] == MATRIX).all()


def test_clean_writes_blob_csv(labels_file, tmp_path):
    path, _ = labels_file
    table = tmp_path / "blobs.csv"
    argv = ["clean", str(path), "-o", str(tmp_path / "c.tif"), "--phase", "pore"]
    assert main([*argv, "--min-aspect", "3", "--blobs-csv", str(table)]) == 0
    with table.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["area"]) for r in rows] == [4, 16, 18, 20]
    assert [r["selected"] for r in rows] == ["0", "1", "0", "1"]
    assert float(rows[1]["aspect_ratio"]) == pytest.approx(16.0)


def test_clean_refuses_to_overwrite(labels_file, tmp_path, fails):
    path, _ = labels_file
    out = tmp_path / "exists.tif"
    out.write_bytes(b"keep me")
    fails(["clean", str(path), "-o", str(out), "--phase", "pore"], "exists")
    assert out.read_bytes() == b"keep me"
    assert main(["clean", str(path), "-o", str(out), "--phase", "pore", "--overwrite"]) == 0
    assert io.read_labels(out).shape == (3, 20, 24)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--phase", "air"], "no phase named 'air'"),
        (["--phase", "7"], "phases are 1=matrix"),
        (["--phase", "pore", "--to", "pore"], "same phase"),
        (["--phase", "pore", "--min-aspect", "0.5"], "min_aspect"),
    ],
)
def test_clean_bad_options(labels_file, tmp_path, fails, extra, match):
    path, _ = labels_file
    out = tmp_path / "c.tif"
    fails(["clean", str(path), "-o", str(out), *extra], match)
    assert not out.exists()


def test_clean_phase_names_need_a_phase_table(tmp_path, fails):
    path = tmp_path / "plain.npy"
    np.save(path, np.ones((2, 4, 4), dtype=np.uint8))
    fails(["clean", str(path), "-o", str(tmp_path / "c.npy"), "--phase", "pore"], "id")
    assert main(["clean", str(path), "-o", str(tmp_path / "c.npy"), "--phase", "1"]) == 0
