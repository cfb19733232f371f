"""``tomoseg gui``: napari with the widgets docked and the volume (or the sample) loaded."""

from __future__ import annotations

import numpy as np

from napari_tomoseg._cli.gui import open_viewer
from napari_tomoseg._napari.annotate import AnnotateWidget
from napari_tomoseg._napari.finetune import FinetuneWidget
from napari_tomoseg._napari.segment import SegmentWidget
from napari_tomoseg.cli import main
from napari_tomoseg.core import io


def test_opens_the_volume_with_widgets_docked(make_napari_viewer, tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8)
    path = io.write_volume(tmp_path / "scan.tif", vol, voxel_size=(2.0, 1.0, 1.0))
    viewer = make_napari_viewer()
    widgets = open_viewer(viewer, path)
    kinds = [type(w) for w in widgets]
    assert kinds[:3] == [SegmentWidget, AnnotateWidget, FinetuneWidget]
    assert viewer.layers["scan"].scale.tolist() == [2.0, 1.0, 1.0]
    np.testing.assert_array_equal(np.asarray(viewer.layers["scan"].data), vol)
    assert widgets[0].image.layer is viewer.layers["scan"]


def test_opens_the_sample_without_a_volume(make_napari_viewer):
    viewer = make_napari_viewer()
    open_viewer(viewer, None)
    assert {"composite", "ground truth"} <= {ly.name for ly in viewer.layers}


def test_bad_path_fails_before_any_window(capsys, tmp_path):
    assert main(["gui", str(tmp_path / "missing.tif")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["gui", str(tmp_path / "notes.txt")]) == 1
    assert "cannot open" in capsys.readouterr().err


def test_sample_has_physical_scale_and_phases(make_napari_viewer):
    from napari_tomoseg._napari.layers import layer_phases
    from napari_tomoseg.core.phases import COMPOSITE_PHASES

    viewer = make_napari_viewer()
    viewer.open_sample("napari-tomoseg", "composite")
    image, truth = viewer.layers["composite"], viewer.layers["ground truth"]
    assert image.scale.tolist() == [1.3, 1.3, 1.3] and truth.scale.tolist() == [1.3, 1.3, 1.3]
    assert str(image.units[0]) == "micrometer"
    assert layer_phases(truth) == COMPOSITE_PHASES
    assert list(truth.features["phase"]) == ["none", "matrix", "fibre", "pore"]
