import numpy as np
import pytest

from napari_tomoseg.core.io.remap import guess_mapping, label_ids, remap_labels


@pytest.mark.parametrize(
    ("ids", "expected"),
    [
        ([0, 1, 2, 3], {0: 0, 1: 1, 2: 2, 3: 3}),  # already ours
        ([0, 2], {0: 0, 2: 2}),
        ([0, 1, 2], {0: 1, 1: 2, 2: 3}),  # 0-based, no background
        ([0, 128, 255], {0: 1, 128: 2, 255: 3}),  # three grey levels, three phases
        ([0, 50, 128, 255], {0: 0, 50: 1, 128: 2, 255: 3}),  # background + three phases
        ([10, 20, 30, 40, 50], {10: 1, 20: 2, 30: 3, 40: 0, 50: 0}),  # too many: rest unannotated
    ],
)
def test_guess_mapping(ids, expected):
    assert guess_mapping(ids, 3) == expected


def test_remap_and_counts():
    labels = np.array([[[0, 128], [255, 128]]], dtype=np.uint16)
    ids, counts = label_ids(labels)
    assert ids.tolist() == [0, 128, 255] and counts.tolist() == [1, 2, 1]
    out = remap_labels(labels, {0: 0, 128: 3, 255: 1}, 3)
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 3], [1, 3]]]
    assert remap_labels(labels, {128: 2}, 3).tolist() == [[[0, 2], [0, 2]]]  # unmapped -> 0
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        remap_labels(labels, {128: 4}, 3)
    with pytest.raises(ValueError, match="integer"):
        label_ids(np.zeros(3, np.float32))
