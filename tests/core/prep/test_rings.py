"""Ring-artifact removal: finds the axis, removes the rings, leaves ring-free volumes alone, tiles exactly."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_tomoseg.core.model import (
    InferenceDefaults,
    ModularUNet,
    TomosegModel,
    UNetConfig,
    load_model,
    save_model,
)
from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom
from napari_tomoseg.core.phases import COMPOSITE_PHASES
from napari_tomoseg.core.prep.intensity import Normalization
from napari_tomoseg.core.prep.rings import RingCorrectedVolume, detect_rings, remove_rings
from napari_tomoseg.core.segment import InferenceConfig, segment_volume

SHAPE = (24, 96, 96)


@pytest.fixture(scope="module")
def pair():
    """The same phantom (same fibres, pores and noise) with and without rings, as float32."""
    cfg = PhantomConfig(shape=SHAPE, dtype="uint16")
    ringed = make_phantom(cfg, seed=3).volume.astype(np.float32)
    clean = make_phantom(replace(cfg, ring_strength=0.0), seed=3).volume.astype(np.float32)
    return ringed, clean


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))


def test_rings_are_found_and_mostly_removed(pair):
    ringed, clean = pair
    detection = detect_rings(ringed)
    assert detection.found
    # the phantom's axis lies within ring_centre_offset (2 voxels) of the slice centre
    assert np.hypot(detection.centre[0] - 47.5, detection.centre[1] - 47.5) <= 2.0 + 0.5
    corrected = remove_rings(ringed)
    assert isinstance(corrected, RingCorrectedVolume)
    # inside the inscribed circle, away from the axis (too few voxels there for a robust median)
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    r = np.hypot(yy - detection.centre[0], xx - detection.centre[1])
    ring = (r >= 12) & (r < SHAPE[1] / 2 - 2)
    before = _rms((ringed - clean)[:, ring])
    after = _rms((corrected[...] - clean)[:, ring])
    assert after < 0.5 * before, (before, after)  # measured: 0.40


def test_a_volume_without_rings_is_left_alone(pair):
    _, clean = pair
    detection = detect_rings(clean)
    assert not detection.found, detection
    assert remove_rings(clean, detection) is clean
    assert Normalization(ring_removal=True).prepare(clean) is clean


def test_any_region_reads_the_same_as_the_whole_and_the_input_is_untouched(pair):
    ringed, _ = pair
    before = ringed.copy()
    whole = RingCorrectedVolume(ringed)[...]
    rng = np.random.default_rng(0)
    for _ in range(12):
        view = RingCorrectedVolume(ringed, detect_rings(ringed).centre)  # a fresh, empty cache
        key = tuple(
            slice(int(a), int(a) + int(rng.integers(1, n - a + 1)), int(rng.integers(1, 3)))
            for a, n in ((int(rng.integers(0, n)), n) for n in SHAPE)
        )
        np.testing.assert_array_equal(view[key], whole[key])
    view = RingCorrectedVolume(ringed)
    np.testing.assert_array_equal(view[5], whole[5])
    np.testing.assert_array_equal(view[:, 7], whole[:, 7])
    np.testing.assert_array_equal(view[..., -1], whole[..., -1])
    np.testing.assert_array_equal(np.asarray(view), whole)
    np.testing.assert_array_equal(ringed, before)
    assert view[2:4].dtype == np.float32


def test_pickles_without_its_cache(pair):
    ringed, _ = pair
    view = RingCorrectedVolume(ringed)
    first = view[3:5]
    copy = pickle.loads(pickle.dumps(view))
    assert copy.centre == view.centre and not copy._profiles
    np.testing.assert_array_equal(copy[3:5], first)


def test_nan_is_refused_with_what_to_do(pair):
    ringed, _ = pair
    bad = ringed.copy()
    bad[4, 10, 10] = np.nan
    view = RingCorrectedVolume(bad, (47.5, 47.5))
    with pytest.raises(ValueError, match="NaN or inf"):
        view[4]


def _model(ring_removal: bool) -> TomosegModel:
    torch.manual_seed(0)
    return TomosegModel(
        ModularUNet(UNetConfig(base_filters=2)),
        COMPOSITE_PHASES,
        Normalization(ring_removal=ring_removal),
        InferenceDefaults(mode="2d", tile=96, overlap=8),
    )


@pytest.mark.parametrize("mode", ["2d", "2d-3axes", "3d-like-blocks"])
def test_segmenting_with_ring_removal_is_segmenting_the_corrected_volume(pair, mode):
    ringed, _ = pair
    model = _model(ring_removal=True)
    corrected = remove_rings(ringed)[...]
    kw = {"mode": "2d-3axes"} if mode == "2d-3axes" else {}
    if mode == "3d-like-blocks":
        kw = {"axis": "y"}  # y-slabs: every block needs whole z slices it does not hold
    expected = segment_volume(corrected, _model(ring_removal=False), InferenceConfig(**kw)).labels
    for block in (3, 50):
        got = segment_volume(ringed, model, InferenceConfig(block=block, **kw)).labels
        np.testing.assert_array_equal(got, expected)
    # switched off for one run, the model segments the raw volume
    raw = segment_volume(ringed, model, InferenceConfig(ring_removal=False, **kw)).labels
    np.testing.assert_array_equal(
        raw, segment_volume(ringed, _model(False), InferenceConfig(**kw)).labels
    )


def test_model_files_keep_the_setting_and_older_files_read_as_off(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _model(ring_removal=True))
    assert load_model(path).normalization.ring_removal
    # a file written before ring removal existed: no ring_removal key in its normalisation
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    meta["normalization"] = json.dumps(
        {k: v for k, v in json.loads(meta["normalization"]).items() if k != "ring_removal"}
    )
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata=meta)
    assert "ring_removal" not in meta["normalization"]
    assert not load_model(old).normalization.ring_removal


def test_the_bundled_model_removes_rings():
    from napari_tomoseg.core.model import bundled_model_path

    assert load_model(bundled_model_path()).normalization.ring_removal


def test_a_field_of_view_edge_is_not_a_ring(pair):
    """Reconstructions are often 0 outside a circular field of view: that step is no ring, the
    outside keeps its constant, and the rings inside are still removed."""
    ringed, clean = pair
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    r = np.hypot(yy - 47.5, xx - 47.5)
    outside = r > 44
    masked_clean = clean.copy()
    masked_clean[:, outside] = 0
    assert not detect_rings(masked_clean).found
    masked = ringed.copy()
    masked[:, outside] = 0
    detection = detect_rings(masked)
    assert detection.found and detection.fill == 0.0
    corrected = remove_rings(masked)[...]
    assert (corrected[:, outside] == 0).all()
    inside = (r >= 12) & (r < 42)
    before = _rms((masked - clean)[:, inside])
    after = _rms((corrected - clean)[:, inside])
    assert after < 0.5 * before, (before, after)


def test_the_same_volume_is_searched_once_and_a_changed_one_again(pair, monkeypatch):
    from collections import OrderedDict

    import napari_tomoseg.core.prep.rings as rings

    ringed, _ = pair
    monkeypatch.setattr(rings, "_DETECTIONS", OrderedDict())  # other tests searched this one
    searched = []
    search = rings._search_centre
    monkeypatch.setattr(
        rings, "_search_centre", lambda *a, **k: searched.append(1) or search(*a, **k)
    )
    volume = ringed.copy()
    first = detect_rings(volume)
    again = detect_rings(volume.copy())  # another array with the same content
    assert again == first and len(searched) == 1
    volume[0, 40, 40] += 1.0  # one voxel of the first slice, which the search reads
    assert detect_rings(volume).centre == pytest.approx(first.centre, abs=0.5)
    assert len(searched) == 2
