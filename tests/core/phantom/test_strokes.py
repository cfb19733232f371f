import numpy as np
import pytest

from napari_tomoseg.core.phantom import PhantomConfig, make_phantom, stroke_annotations


@pytest.fixture(scope="module")
def slice_labels() -> np.ndarray:
    config = PhantomConfig(shape=(4, 128, 128), pore_fraction=0.01)
    return make_phantom(config, seed=3).labels[1]


def test_strokes_cover_the_fraction_inside_their_phases(slice_labels: np.ndarray) -> None:
    strokes = stroke_annotations(slice_labels, fraction=0.1, seed=2)
    assert strokes.shape == slice_labels.shape and strokes.dtype == np.uint8
    annotated = strokes > 0
    assert 0.09 <= annotated.mean() <= 0.12
    np.testing.assert_array_equal(
        strokes[annotated], slice_labels[annotated]
    )  # never across phases
    for p in np.unique(slice_labels[slice_labels > 0]):
        assert (strokes == p).any(), f"phase {p} got no stroke"


def test_rare_phases_get_at_least_their_floor_and_strokes_are_thin(
    slice_labels: np.ndarray,
) -> None:
    strokes = stroke_annotations(slice_labels, fraction=0.1, floor=0.1, seed=0)
    total = (strokes > 0).sum()
    pore_area = (slice_labels == 3).sum()
    pores = (strokes == 3).sum()
    # the pore share is lifted above its area share (capped by what its skeleton allows)
    assert pores / total > pore_area / (slice_labels > 0).sum()
    assert pores >= min(0.1 * total, 0.3 * pore_area)
    # width 3: a stroke never covers a 5x5 square of matrix
    from scipy import ndimage as ndi

    assert not ndi.binary_erosion(strokes == 1, np.ones((5, 5), bool)).any()


def test_strokes_are_deterministic_per_seed(slice_labels: np.ndarray) -> None:
    a = stroke_annotations(slice_labels, seed=5)
    np.testing.assert_array_equal(a, stroke_annotations(slice_labels, seed=5))
    assert (a != stroke_annotations(slice_labels, seed=6)).any()


def test_stroke_annotations_rejects_bad_input(slice_labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="2D slice"):
        stroke_annotations(slice_labels[None])
    with pytest.raises(ValueError, match="fraction"):
        stroke_annotations(slice_labels, fraction=0)
    with pytest.raises(ValueError, match="width"):
        stroke_annotations(slice_labels, width=2)
    with pytest.raises(ValueError, match="integer"):
        stroke_annotations(slice_labels.astype(np.float32))
    assert not stroke_annotations(np.zeros((8, 8), np.uint8)).any()
