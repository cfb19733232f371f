import numpy as np

from napari_tomoseg.core.learn.augment import (
    apply_dihedral,
    dihedral_transforms,
    random_dihedral,
    random_intensity,
)


def test_group_sizes_and_distinct_results():
    sq = np.arange(16).reshape(4, 4)
    assert len(dihedral_transforms(2)) == 8
    assert len({apply_dihedral(sq, p, f).tobytes() for p, f in dihedral_transforms(2)}) == 8
    cube = np.arange(27).reshape(3, 3, 3)
    assert len(dihedral_transforms(3)) == 48
    assert len({apply_dihedral(cube, p, f).tobytes() for p, f in dihedral_transforms(3)}) == 48


def test_channels_untouched_and_labels_follow_image():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (8, 8))
    image = np.stack([labels * 1.0, labels * 2.0]).astype(
        np.float32
    )  # channels derived from labels
    for _ in range(20):
        img, lab = random_dihedral(image, labels, rng)
        np.testing.assert_array_equal(img[0], lab)
        np.testing.assert_array_equal(img[1], 2 * lab)


def test_random_intensity_is_seeded():
    img = np.full((1, 4, 4), 0.5, np.float32)
    a = random_intensity(img, np.random.default_rng(3))
    b = random_intensity(img, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and not np.array_equal(a, img)
