"""Layer pickers that follow the viewer, and the layer helpers (checks, phase names and colours)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tomoseg._napari.layers import (
    LayerPicker,
    apply_phases,
    check_image_layer,
    layer_phases,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES

SHAPE = (4, 8, 8)


def test_annotations_picker_prefers_annotations_and_never_picks_truth_or_prediction(
    make_napari_viewer,
):
    v = make_napari_viewer()
    v.add_image(np.zeros(SHAPE), name="composite")
    v.add_labels(np.zeros(SHAPE, np.uint8), name="ground truth")
    p = LayerPicker(v, "labels", prefer=("annotations",), avoid=("ground truth", "prediction"))
    assert p.layer is None
    v.add_labels(np.zeros(SHAPE, np.uint8), name="prediction")
    assert p.layer is None
    assert [ly.name for ly in p.layers()] == ["ground truth", "prediction"]  # still choosable
    ann = v.add_labels(np.zeros(SHAPE, np.uint8), name="annotations")
    assert p.layer is ann
    p.value = v.layers["ground truth"]  # the user's choice sticks
    v.add_labels(np.zeros(SHAPE, np.uint8), name="other")
    assert p.layer is v.layers["ground truth"]
    v.layers.remove("ground truth")  # ... while the layer exists
    assert p.layer is ann
    other = v.layers["other"]
    other.name = "renamed"
    assert "renamed" in [p.native.itemText(i) for i in range(p.native.count())]


def test_image_picker_follows_the_viewer(make_napari_viewer, small_phantom):
    viewer = make_napari_viewer()
    picker = LayerPicker(viewer, "image", accept=lambda ly: ly.ndim == 3)
    assert picker.layer is None
    volume, labels = small_phantom
    viewer.add_image(volume, name="ct")
    viewer.add_image(volume[0], name="flat")  # 2D: filtered out
    viewer.add_labels(labels, name="lab")  # another kind
    assert [ly.name for ly in picker.layers()] == ["ct"]
    assert picker.layer is viewer.layers["ct"]
    viewer.layers["ct"].name = "scan"
    assert picker.native.currentText() == "scan"
    del viewer.layers["scan"]
    assert picker.layer is None and picker.layers() == []


def test_check_image_layer_refuses_bad_input(make_napari_viewer, small_phantom):
    viewer = make_napari_viewer()
    volume, _ = small_phantom
    with pytest.raises(ValueError, match="no image layer"):
        check_image_layer(None)
    flat = viewer.add_image(volume[0], name="flat")
    with pytest.raises(ValueError, match="3D volume"):
        check_image_layer(flat)
    rgb = viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True, name="photo")
    with pytest.raises(ValueError, match="RGB"):
        check_image_layer(rgb)
    ok = viewer.add_image(volume, name="ct")
    assert check_image_layer(ok).shape == volume.shape


def test_apply_phases_names_and_colours(make_napari_viewer, small_phantom):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(small_phantom[1])
    assert layer_phases(layer) is None
    apply_phases(layer, COMPOSITE_PHASES)
    assert list(layer.features["phase"]) == ["none", "matrix", "fibre", "pore"]
    np.testing.assert_allclose(
        layer.colormap.map(np.array([2]))[0][:3], [0xE6 / 255, 0x9F / 255, 0]
    )
    assert layer.colormap.map(np.array([0]))[0][3] == 0  # not annotated: transparent
    assert layer_phases(layer) == COMPOSITE_PHASES
