"""tomoseg suggest --json: the exact output format, and annotations taken into account."""

import json

import numpy as np
import pytest
import tifffile

from napari_tomoseg.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("suggest")
    argv = ["synth", "-o", str(d / "vol.tif"), "--labels", str(d / "truth.tif")]
    assert main([*argv, "--shape", "16", "48", "48", "--seed", "7"]) == 0
    truth = tifffile.imread(d / "truth.tif")
    ann = np.zeros_like(truth)
    ann[[5, 10]] = truth[[5, 10]]
    tifffile.imwrite(d / "ann.tif", ann)
    return d


def test_suggest_json_format_and_annotations(data, capsys):
    argv = ["suggest", str(data / "vol.tif"), "-n", "3", "--json", "--threads", "1"]
    assert main([*argv, "--annotations", str(data / "ann.tif"), "--axis", "z"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["axis", "slices"] and result["axis"] == "z"
    assert len(result["slices"]) == 3
    for s in result["slices"]:
        assert list(s) == ["index", "score"]
        assert isinstance(s["index"], int) and isinstance(s["score"], float)
        assert 0 <= s["score"] <= 1
    picked = [s["index"] for s in result["slices"]]
    assert len(set(picked)) == 3
    # annotated slices are never suggested, nor (16 slices, 2 annotated + 3 to pick) their neighbours
    # or the outermost slices
    assert not {4, 5, 6, 9, 10, 11, 0, 15} & set(picked)
    text_argv = ["suggest", str(data / "vol.tif"), "-n", "3", "--threads", "1"]
    assert main([*text_argv, "--annotations", str(data / "ann.tif")]) == 0
    text = capsys.readouterr().out
    assert all(f"z={i}" in text for i in picked) and "coverage" in text
