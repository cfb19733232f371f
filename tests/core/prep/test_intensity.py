import numpy as np
import pytest

from napari_tomoseg.core.prep.intensity import Normalization, apply_range, robust_range, subsample


def test_percentile_range_ignores_outliers():
    v = np.full((10, 50, 50), 100, np.uint16)
    v[:, :, :25] = 200
    v[0, 0, :3] = 65535  # hot pixels
    lo, hi = robust_range(v, 0.5, 99.5)
    assert (lo, hi) == (100.0, 200.0)
    out = apply_range(v[:1, :2, 24:27], lo, hi)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 1], [1.0, 0.0, 0.0])  # x < 25 is 200


def test_subsample_bounded_and_strided():
    v = np.arange(64 * 64 * 64, dtype=np.int32).reshape(64, 64, 64)
    s = subsample(v, 10_000)
    assert 1_000 < s.size <= 20_000
    assert s.min() == 0


def test_8_and_16_bit_versions_normalise_alike():
    rng = np.random.default_rng(0)
    v8 = rng.integers(20, 220, (8, 32, 32)).astype(np.uint8)
    v16 = v8.astype(np.uint16) * 257
    n = Normalization()
    a = apply_range(v8, *n.volume_range(v8))
    b = apply_range(v16, *n.volume_range(v16))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_constant_and_nan_volumes_are_refused():
    with pytest.raises(ValueError, match="constant"):
        robust_range(np.zeros((2, 4, 4)))
    bad = np.ones((2, 4, 4), np.float32)
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        robust_range(bad)


def test_validation():
    with pytest.raises(ValueError, match="low_percentile"):
        Normalization(low_percentile=50, high_percentile=10)
