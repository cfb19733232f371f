"""core.measure.report: the export report (JSON-ready dict, CSV) and the text form of an evaluation."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from napari_tomoseg.core.measure.evaluate import evaluate
from napari_tomoseg.core.measure.report import (
    build_report,
    evaluation_text,
    format_cell,
    report_csv,
    table_to_csv,
)
from napari_tomoseg.core.phases import PhaseTable

PHASES = PhaseTable.from_names(["matrix", "fibre", "pore"])


@pytest.fixture
def volumes():
    ref = np.ones((2, 4, 4), np.uint8)
    ref[:, :2] = 2
    pred = ref.copy()
    pred[0, 0, :] = 1
    pred[1, 3, 3] = 0  # outside the mask: not counted in fractions
    image = np.where(ref == 2, 200, 50).astype(np.uint8)
    return pred, ref, image


def test_report_without_evaluation(volumes):
    pred, _, _ = volumes
    rep = build_report(pred, PHASES, voxel_size=(2.0, 1.0, 1.0), name="prediction")
    json.dumps(rep)  # plain JSON types only
    assert rep["layer"] == "prediction" and rep["shape"] == [2, 4, 4]
    assert rep["voxel_size_um"] == [2.0, 1.0, 1.0]
    assert rep["software"].startswith("napari-tomoseg ")
    by_name = {p["name"]: p for p in rep["phases"]}
    assert by_name["matrix"]["voxels"] == 19 and by_name["fibre"]["voxels"] == 12
    assert by_name["matrix"]["fraction"] == pytest.approx(19 / 31)
    assert by_name["fibre"]["volume_um3"] == pytest.approx(24.0)
    assert by_name["pore"]["fraction"] == 0.0
    assert by_name["matrix"]["colour"] == PHASES.phases[0].colour
    assert "evaluation" not in rep and "model" not in rep and "jaccard" not in by_name["pore"]
    lines = report_csv(rep).splitlines()
    assert lines[0] == "phase_id,phase,voxels,fraction,volume_um3,jaccard"
    assert lines[1].startswith("1,matrix,19,") and lines[1].endswith(",")  # no Jaccard yet
    assert len(lines) == 4


def test_report_with_evaluation_and_model(volumes):
    pred, ref, _ = volumes
    evaluation = evaluate(pred, ref, phases=PHASES, reference_name="ground truth")
    rep = build_report(
        pred,
        PHASES,
        voxel_size=None,
        name="prediction",
        evaluation=evaluation,
        model_provenance={"steps": 3},
        model_name="m.safetensors",
    )
    json.dumps(rep)
    assert [p["jaccard"] for p in rep["phases"]] == [
        pytest.approx(15 / 19),  # 4 fibre voxels called matrix; one matrix voxel left out
        pytest.approx(12 / 16),
        None,  # absent from both: undefined, not 0 or 1
    ]
    assert rep["evaluation"]["reference"] == "ground truth"
    assert rep["evaluation"]["mean_jaccard"] == pytest.approx((15 / 19 + 12 / 16) / 2)
    assert rep["model"] == {"name": "m.safetensors", "provenance": {"steps": 3}}
    rows = list(csv.reader(io.StringIO(report_csv(rep))))
    assert rows[-1][1] == "mean" and float(rows[-1][-1]) == pytest.approx((15 / 19 + 12 / 16) / 2)
    assert rows[3][-1] == ""  # pore: n/a


def test_evaluation_text_shows_baseline_and_confusion(volumes):
    pred, ref, image = volumes
    text = evaluation_text(evaluate(pred, ref, phases=PHASES, image=image, exclude_outside=False))
    assert "Jaccard grey-level" in text and "confusion matrix" in text
    lines = text.splitlines()
    fibre = next(line for line in lines if line.startswith("fibre") and "%" in line)
    assert fibre.split()[1:3] == ["0.7500", "1.0000"]  # U-Net 12/16, grey-level 1
    pore = next(line for line in lines if line.startswith("pore") and "%" in line)
    assert pore.split()[1:3] == ["n/a", "n/a"]
    fibre_row = [line for line in lines if line.startswith("fibre")][-1].split()
    assert fibre_row[1:] == ["0", "4", "12", "0"]  # reference fibre: 4 called matrix
    matrix_row = [line for line in lines if line.startswith("matrix")][-1].split()
    assert matrix_row[1:] == ["1", "15", "0", "0"]  # the voxel outside the mask counts as missed


def test_cells_and_csv():
    assert format_cell(None, "Jaccard U-Net") == "n/a"
    assert format_cell(0.123456, "Jaccard U-Net") == "0.1235"
    assert format_cell(0.5, "fraction (prediction)") == "50.00 %"
    assert format_cell(123456.0, "volume (µm³)") == "1.235e+05"
    assert table_to_csv(["a", "b"], [[1, None]], delimiter="\t") == "a\tb\n1\t\n"
