import numpy as np
from napari_tomoseg._napari.layers import LayerPicker

def test_picker(make_napari_viewer):
    v = make_napari_viewer()
    v.add_image(np.zeros((4, 8, 8)), name="composite")
    v.add_labels(np.zeros((4, 8, 8), np.uint8), name="ground truth")
    p = LayerPicker(v, "labels", prefer=("annotations",), avoid=("ground truth", "prediction"))
    assert p.layer is None
    v.add_labels(np.zeros((4, 8, 8), np.uint8), name="prediction")
    assert p.layer is None
    ann = v.add_labels(np.zeros((4, 8, 8), np.uint8), name="annotations")
    assert p.layer is ann
    p.value = v.layers["ground truth"]  # the user's choice sticks
    v.add_labels(np.zeros((4, 8, 8), np.uint8), name="other")
    assert p.layer is v.layers["ground truth"]
    v.layers.remove("ground truth")
    assert p.layer is ann
    other = v.layers["other"]; other.name = "renamed"
    assert "renamed" in [c for c in p.choices if c is not None and True] or other in p.choices
    img = LayerPicker(v, "image")
    assert img.layer is v.layers["composite"]
