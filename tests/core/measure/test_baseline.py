"""Grey-level ("Bin") classifier: known answers, unseen values, sparse labels, dtypes, validation."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from napari_tomoseg.core.measure import baseline
from napari_tomoseg.core.measure.baseline import GreyLevelClassifier, grey_level_baseline
from napari_tomoseg.core.measure.metrics import jaccard_per_phase
from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom


def toy(dtype: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
    """Value 10: phase 1 x3, phase 2 x1 -> 1.  Value 20: phase 2 x2 -> 2.  Value 40: phase 3."""
    volume = np.array([10, 10, 10, 10, 20, 20, 40], dtype=dtype)
    labels = np.array([1, 1, 1, 2, 2, 2, 3], dtype=np.uint8)
    return volume, labels


def test_majority_phase_per_grey_value() -> None:
    vol, lab = toy()
    clf = GreyLevelClassifier(3).fit(vol, lab)
    np.testing.assert_array_equal(clf.predict(np.array([10, 20, 40], np.uint8)), [1, 2, 3])
    assert clf.mode == "exact" and clf.n_bins == 256
    assert clf.counts is not None and clf.counts[:, 10].tolist() == [3, 1, 0]


def test_unseen_values_take_the_nearest_seen_value() -> None:
    vol, lab = toy()
    clf = GreyLevelClassifier(3).fit(vol, lab)
    queries = np.array([0, 12, 14, 15, 16, 19, 29, 31, 255], np.uint8)
    # 15 is equidistant from 10 and 20: the lower value wins; 30 would tie 20/40 likewise.
    np.testing.assert_array_equal(clf.predict(queries), [1, 1, 1, 1, 2, 2, 2, 3, 3])


def test_unannotated_voxels_are_ignored() -> None:
    vol, lab = toy()
    # Many unannotated voxels at value 20 and 40 must not change anything.
    vol = np.concatenate([vol, np.full(100, 20, np.uint8), np.full(100, 40, np.uint8)])
    lab = np.concatenate([lab, np.zeros(200, np.uint8)])
    pred = GreyLevelClassifier(3).fit(vol, lab).predict(vol)
    np.testing.assert_array_equal(pred[:7], [1, 1, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(pred[7:107], 2)
    assert pred.dtype == np.uint8 and pred.shape == vol.shape


def test_works_with_sparse_annotations_of_a_3d_volume() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, size=(6, 20, 20)).astype(np.uint8)
    vol = (truth * 50 + rng.integers(0, 10, truth.shape)).astype(np.uint8)
    sparse = np.zeros_like(truth)
    sparse[2] = truth[2]  # one annotated slice
    pred = GreyLevelClassifier(3).fit(vol, sparse).predict(vol)
    assert pred.shape == vol.shape
    np.testing.assert_array_equal(pred, truth)


def test_uint16_uses_one_bin_per_value() -> None:
    vol = np.array([100, 100, 40000, 40000, 40001], np.uint16)
    lab = np.array([1, 1, 2, 2, 2], np.uint8)
    clf = GreyLevelClassifier(2).fit(vol, lab)
    assert clf.n_bins == 65536 and clf.mode == "exact"
    np.testing.assert_array_equal(
        clf.predict(np.array([0, 100, 20049, 20051, 40000, 65535], np.uint16)), [1, 1, 1, 2, 2, 2]
    )


def test_signed_integers_with_negative_values() -> None:
    vol = np.array([-50, -50, 7, 7], np.int16)
    lab = np.array([1, 1, 2, 2], np.uint8)
    clf = GreyLevelClassifier(2).fit(vol, lab)
    np.testing.assert_array_equal(
        clf.predict(np.array([-32768, -50, -22, -21, 7, 32767], np.int16)), [1, 1, 1, 2, 2, 2]
    )


def test_wide_integer_span_is_quantised() -> None:
    vol = np.array([0, 1, 2_000_000_000, 2_000_000_001], np.int64)
    lab = np.array([1, 1, 2, 2], np.uint8)
    clf = GreyLevelClassifier(2).fit(vol, lab)
    assert clf.mode == "quantised" and clf.n_bins == baseline.N_FLOAT_BINS
    np.testing.assert_array_equal(
        clf.predict(np.array([-5, 3, 1_999_999_999], np.int64)), [1, 1, 2]
    )


def test_small_span_int32_keeps_exact_bins() -> None:
    vol = np.array([1000, 1001, 1003], np.int32)
    lab = np.array([1, 2, 2], np.uint8)
    clf = GreyLevelClassifier(2).fit(vol, lab)
    assert clf.mode == "exact" and clf.n_bins == 4
    np.testing.assert_array_equal(
        clf.predict(np.array([0, 1000, 1001, 1002, 5000], np.int32)), [1, 1, 2, 2, 2]
    )


def test_float_volumes_are_quantised_between_robust_limits() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(1, 3, 5000).astype(np.uint8)
    vol = np.where(truth == 1, 0.2, 0.8) + rng.normal(0, 0.05, truth.size)
    clf = GreyLevelClassifier(2).fit(vol, truth)
    assert clf.mode == "quantised" and clf.n_bins == baseline.N_FLOAT_BINS
    np.testing.assert_array_equal(clf.predict(vol), truth)
    # far outside the fitted range: the nearest end
    np.testing.assert_array_equal(clf.predict(np.array([-1e6, 1e6])), [1, 2])


def test_unseen_phase_is_never_predicted_and_output_is_in_range() -> None:
    vol, lab = toy()
    pred = GreyLevelClassifier(5).fit(vol, lab).predict(np.arange(256, dtype=np.uint8))
    assert set(np.unique(pred).tolist()) == {1, 2, 3}


def test_bin_is_at_least_as_good_as_any_pair_of_thresholds() -> None:
    """It picks the best phase per grey value, so no two-threshold segmentation gets more voxels right."""
    ph = make_phantom(PhantomConfig(shape=(16, 48, 48)), seed=0)
    vol, truth = ph.volume, ph.labels
    correct = np.mean(GreyLevelClassifier(3).fit(vol, truth).predict(vol) == truth)
    best = 0.0
    for low in range(0, 256, 8):
        for high in range(low, 256, 8):
            seg = np.where(vol < low, 3, np.where(vol < high, 1, 2))
            best = max(best, float(np.mean(seg == truth)))
    assert correct >= best
    assert correct > 0.9


def test_slab_processing_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    ph = make_phantom(PhantomConfig(shape=(12, 32, 32)), seed=1)
    whole = GreyLevelClassifier(3).fit(ph.volume, ph.labels)
    monkeypatch.setattr(baseline, "_SLAB_VOXELS", 1000)  # ~1 slice per slab
    sliced = GreyLevelClassifier(3).fit(ph.volume, ph.labels)
    np.testing.assert_array_equal(whole.counts, sliced.counts)
    np.testing.assert_array_equal(whole.predict(ph.volume), sliced.predict(ph.volume))
    fvol = ph.volume.astype(np.float32)
    monkeypatch.setattr(baseline, "_SUBSAMPLE", 500)
    a = GreyLevelClassifier(3).fit(fvol, ph.labels).predict(fvol)
    assert np.mean(a == whole.predict(ph.volume)) > 0.99


def test_grey_level_baseline_fits_and_predicts(caplog: pytest.LogCaptureFixture) -> None:
    ph = make_phantom(PhantomConfig(shape=(8, 32, 32)), seed=2)
    expected = GreyLevelClassifier(3).fit(ph.volume, ph.labels).predict(ph.volume)
    np.testing.assert_array_equal(grey_level_baseline(ph.volume, ph.labels, 3), expected)
    with caplog.at_level(logging.INFO, logger="napari_tomoseg.core.measure.baseline"):
        pred = grey_level_baseline(ph.volume, ph.labels, 3, reference=ph.labels)
    np.testing.assert_array_equal(pred, expected)
    mean = float(np.mean(jaccard_per_phase(pred, ph.labels, 3)))
    assert f"mean {mean:.4f}" in caplog.text


# ---------------------------------------------------------------------------- validation


def test_rejects_labels_outside_the_phase_range() -> None:
    vol, lab = toy()
    lab[0] = 7
    with pytest.raises(ValueError, match=r"\[7\].*0\.\.3.*found: \[1, 2, 3, 7\]"):
        GreyLevelClassifier(3).fit(vol, lab)
    with pytest.raises(ValueError, match=r"outside the allowed 0\.\.3"):
        GreyLevelClassifier(3).fit(vol, np.array([1, -1, 1, 1, 1, 1, 1], np.int8))


def test_rejects_mismatched_shapes_and_non_integer_labels() -> None:
    vol, lab = toy()
    with pytest.raises(ValueError, match="shape"):
        GreyLevelClassifier(3).fit(vol, lab[:-1])
    with pytest.raises(ValueError, match="integer phase ids"):
        GreyLevelClassifier(3).fit(vol, lab.astype(np.float32))


def test_rejects_empty_annotations() -> None:
    vol, lab = toy()
    with pytest.raises(ValueError, match="no annotated voxel"):
        GreyLevelClassifier(3).fit(vol, np.zeros_like(lab))


def test_rejects_nan_in_float_volumes() -> None:
    vol = np.array([0.1, np.nan, 0.5])
    lab = np.array([1, 1, 2], np.uint8)
    with pytest.raises(ValueError, match="NaN"):
        GreyLevelClassifier(2).fit(vol, lab)
    clf = GreyLevelClassifier(2).fit(np.array([0.1, 0.2, 0.5]), lab)
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(vol)


def test_rejects_mixing_integer_and_float_volumes() -> None:
    vol, lab = toy()
    clf = GreyLevelClassifier(3).fit(vol, lab)
    with pytest.raises(ValueError, match=r"integer grey values.*float"):
        clf.predict(vol.astype(np.float32))


def test_rejects_non_numeric_volumes_and_bad_phase_counts() -> None:
    with pytest.raises(ValueError, match="grey values"):
        GreyLevelClassifier(2).fit(np.array(["a", "b"]), np.array([1, 2]))
    with pytest.raises(ValueError, match="n_phases"):
        GreyLevelClassifier(0)
    with pytest.raises(ValueError, match="n_phases"):
        GreyLevelClassifier(255)


def test_predict_before_fit_raises() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        GreyLevelClassifier(3).predict(np.zeros(4, np.uint8))
