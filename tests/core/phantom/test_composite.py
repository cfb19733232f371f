"""Synthetic composite phantom: determinism, ground truth, geometry, degradation, hardness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from napari_tomoseg.core.measure.baseline import GreyLevelClassifier
from napari_tomoseg.core.measure.metrics import jaccard_per_phase, mean_jaccard, phase_fractions
from napari_tomoseg.core.phantom.composite import (
    RANDOM_CONFIG_RANGES,
    Phantom,
    PhantomConfig,
    make_phantom,
    random_config,
)

SMALL = (24, 48, 48)
# Geometry only: no imaging artefacts, so the grey levels follow the labels up to blur.
CLEAN = {"noise": 0.0, "ring_strength": 0.0, "cupping": 0.0}


@pytest.fixture(scope="module")
def default_phantom() -> Phantom:
    return make_phantom(PhantomConfig(), seed=0)


def bin_scores(volume: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-phase Jaccard of the best grey-level classifier fitted on the volume's own truth."""
    return jaccard_per_phase(GreyLevelClassifier(3).fit(volume, labels).predict(volume), labels, 3)


# ---------------------------------------------------------------------------- default phantom


def test_default_phantom_shape_dtype_and_labels(default_phantom: Phantom) -> None:
    ph = default_phantom
    assert ph.volume.shape == ph.labels.shape == (128, 128, 128)
    assert ph.volume.dtype == np.uint8
    assert ph.labels.dtype == np.uint8
    assert set(np.unique(ph.labels).tolist()) == {1, 2, 3}  # every voxel labelled, no 0
    assert ph.seed == 0 and ph.config == PhantomConfig()


def test_default_phase_fractions_match_the_published_composite(default_phantom: Phantom) -> None:
    matrix, fibre, pore = phase_fractions(default_phantom.labels, 3)
    assert 0.14 <= fibre <= 0.20
    assert 0.002 <= pore <= 0.01
    assert 0.79 <= matrix <= 0.85


def test_default_volume_uses_the_grey_range_without_clipping(default_phantom: Phantom) -> None:
    v = default_phantom.volume
    clipped = np.mean((v == 0) | (v == 255))
    assert clipped < 0.001
    assert np.percentile(v, 99.9) - np.percentile(v, 0.1) > 100


def test_default_phantom_is_hard_for_grey_levels(default_phantom: Phantom) -> None:
    """The published "Bin" classifier scores ~0.76 on the real composite; the phantom must be as hard."""
    ph = default_phantom
    raw = mean_jaccard(bin_scores(ph.volume, ph.labels))
    filtered = mean_jaccard(bin_scores(ndimage.median_filter(ph.volume, size=3), ph.labels))
    assert raw <= 0.80
    assert filtered <= 0.85
    # ... but not hopeless: the image still carries the phases (thresholds get most voxels right).
    assert raw >= 0.6


def test_ground_truth_is_what_the_clean_image_shows() -> None:
    """Without noise and artefacts a grey-level classifier recovers the labels: the truth is in the image."""
    ph = make_phantom(PhantomConfig(shape=(48, 96, 96), **CLEAN), seed=3)
    scores = bin_scores(ph.volume, ph.labels)
    assert scores[0] > 0.97  # matrix
    assert scores[1] > 0.92  # fibre
    assert scores[2] > 0.7  # pore: small blurred ellipsoids


def test_phases_have_the_expected_grey_order(default_phantom: Phantom) -> None:
    ph = default_phantom
    medians = [np.median(ph.volume[ph.labels == k]) for k in (1, 2, 3)]
    matrix, fibre, pore = medians
    assert pore < matrix < fibre


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_arrays() -> None:
    cfg = PhantomConfig(shape=SMALL)
    a, b = make_phantom(cfg, seed=7), make_phantom(cfg, seed=7)
    np.testing.assert_array_equal(a.volume, b.volume)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_different_seeds_give_different_arrays() -> None:
    cfg = PhantomConfig(shape=SMALL)
    a, b = make_phantom(cfg, seed=7), make_phantom(cfg, seed=8)
    assert not np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.volume, b.volume)


def test_degradation_knobs_keep_the_geometry() -> None:
    """Geometry and imaging draw from separate streams: changing noise or contrast keeps the labels."""
    cfg = PhantomConfig(shape=SMALL)
    a = make_phantom(cfg, seed=2)
    b = make_phantom(
        dataclasses.replace(cfg, noise=0.1, contrast=0.8, blur=0.6, ring_strength=0.0), seed=2
    )
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.volume, b.volume)


# ---------------------------------------------------------------------------- dtype and shape


@pytest.mark.parametrize("shape", [(8, 40, 24), (16, 16, 64), (4, 96, 96)])
def test_shape_follows_config(shape: tuple[int, int, int]) -> None:
    ph = make_phantom(PhantomConfig(shape=shape), seed=1)
    assert ph.volume.shape == ph.labels.shape == shape


def test_uint16_output_uses_more_than_8_bits() -> None:
    ph = make_phantom(PhantomConfig(shape=SMALL, dtype="uint16"), seed=4)
    assert ph.volume.dtype == np.uint16
    assert int(ph.volume.max()) - int(ph.volume.min()) > 255
    assert len(np.unique(ph.volume)) > 256
    assert np.mean(ph.volume == np.iinfo(np.uint16).max) < 0.001


def test_uint16_and_uint8_show_the_same_scene() -> None:
    cfg = PhantomConfig(shape=SMALL)
    a = make_phantom(cfg, seed=5)
    b = make_phantom(dataclasses.replace(cfg, dtype="uint16"), seed=5)
    np.testing.assert_array_equal(a.labels, b.labels)
    scaled = b.volume.astype(np.float64) * 255 / 65535
    assert np.abs(scaled - a.volume).max() <= 1.0  # same image, finer quantisation


# ---------------------------------------------------------------------------- geometry


def test_parallel_fibres_are_straight_cylinders_through_the_volume() -> None:
    radius = 4.0
    cfg = PhantomConfig(
        shape=(32, 96, 96),
        fibre_radius=radius,
        fibre_radius_spread=0.0,
        fibre_alignment_spread=0.0,
        pore_fraction=0.0,
        **CLEAN,
    )
    ph = make_phantom(cfg, seed=0)
    fibre = ph.labels == 2
    # Parallel to z and crossing the volume: every slice shows the same cross-sections.
    assert all(np.array_equal(fibre[0], fibre[z]) for z in range(cfg.shape[0]))
    components, n = ndimage.label(fibre[0])
    areas = np.bincount(components.ravel())[1:]
    # Cross-sections away from the border are digital discs of the fibre radius (49 voxels for r=4).
    inner = [a for k, a in enumerate(areas, 1) if not _touches_border(components == k)]
    assert len(inner) >= 10
    assert np.median(inner) == pytest.approx(np.pi * radius**2, rel=0.1)
    # Overlaps are rejected, so nearly every fibre is its own connected cross-section.
    assert n >= 0.8 * ph.n_fibres


def test_tilted_fibres_follow_the_mean_direction() -> None:
    """Fibres along x instead of z: long runs along x, short along z."""
    cfg = PhantomConfig(
        shape=(48, 48, 48),
        fibre_direction=(0.0, 0.0, 2.0),
        fibre_alignment_spread=0.05,
        pore_fraction=0.0,
        **CLEAN,
    )
    assert cfg.fibre_direction == (0.0, 0.0, 1.0)  # normalised
    fibre = make_phantom(cfg, seed=0).labels == 2
    # Chance that the next voxel along an axis is still fibre: high along the fibres only.
    along_x = np.mean(fibre[:, :, 1:][fibre[:, :, :-1]])
    along_z = np.mean(fibre[1:][fibre[:-1]])
    assert along_x > 0.95
    assert along_z < 0.9


def test_fibre_length_puts_fibre_ends_inside_the_volume() -> None:
    cfg = PhantomConfig(
        shape=(64, 48, 48), fibre_length=20.0, fibre_alignment_spread=0.0, pore_fraction=0.0
    )
    fibre = make_phantom(cfg, seed=0).labels == 2
    components, _ = ndimage.label(fibre)
    extents = [s[0].stop - s[0].start for s in ndimage.find_objects(components)]
    assert np.median(extents) < 40  # short fibres, not columns through all 64 slices
    assert 0.14 <= fibre.mean() <= 0.20  # the fraction is still reached


def test_pore_touching_fraction_controls_contact_with_fibres() -> None:
    base = PhantomConfig(shape=(32, 64, 64), pore_fraction=0.01)

    def contact(touching: float) -> float:
        ph = make_phantom(dataclasses.replace(base, pore_touching_fraction=touching), seed=1)
        pore, fibre = ph.labels == 3, ph.labels == 2
        return float(np.mean(ndimage.binary_dilation(fibre)[pore]))

    assert contact(0.0) == 0.0  # free pores keep clear of every fibre
    assert contact(1.0) > 0.08  # a good share of the pore voxels border a fibre


def test_pores_are_compact_blobs_of_about_the_requested_size() -> None:
    cfg = PhantomConfig(
        shape=(48, 64, 64),
        fibre_fraction=0.0,
        pore_fraction=0.01,
        pore_radius=3.0,
        pore_aspect_spread=0.0,
        **CLEAN,
    )
    pore = make_phantom(cfg, seed=2).labels == 3
    assert 0.008 <= pore.mean() <= 0.013
    components, _ = ndimage.label(pore)
    sizes = np.bincount(components.ravel())[1:]
    assert np.median(sizes) == pytest.approx(4 / 3 * np.pi * 3.0**3, rel=0.5)


# ---------------------------------------------------------------------------- imaging artefacts

EMPTY = {"fibre_fraction": 0.0, "pore_fraction": 0.0, "noise": 0.0, "blur": 0.0}


def test_rings_are_concentric_around_the_rotation_axis() -> None:
    cfg = PhantomConfig(
        shape=(16, 65, 65), ring_strength=0.3, n_rings=12, ring_centre_offset=0.0, **EMPTY
    )
    v = make_phantom(cfg, seed=3).volume.astype(np.int32)
    assert v.std() > 0  # rings are there
    sl = v[v.reshape(16, -1).std(axis=1).argmax()]
    # Centred on the middle of the slice: symmetric under flips and transposition.
    np.testing.assert_array_equal(sl, sl[::-1, :])
    np.testing.assert_array_equal(sl, sl[:, ::-1])
    np.testing.assert_array_equal(sl, sl.T)


def test_ring_centre_offset_moves_the_rings_off_centre() -> None:
    cfg = PhantomConfig(
        shape=(16, 65, 65), ring_strength=0.3, n_rings=12, ring_centre_offset=4.0, **EMPTY
    )
    v = make_phantom(cfg, seed=3).volume
    assert any(not np.array_equal(v[z], v[z, ::-1, ::-1]) for z in range(16))


def test_cupping_darkens_the_centre() -> None:
    cfg = PhantomConfig(shape=(8, 64, 64), cupping=0.3, ring_strength=0.0, **EMPTY)
    v = make_phantom(cfg, seed=0).volume.astype(np.float64)
    assert v[:, 28:36, 28:36].mean() < v[:, :4, :4].mean() - 10


def test_blur_and_noise_change_what_they_should() -> None:
    flat = PhantomConfig(shape=SMALL, ring_strength=0.0, noise=0.0, blur=0.0)
    sharp = make_phantom(flat, seed=0).volume.astype(np.float64)
    blurred = make_phantom(dataclasses.replace(flat, blur=1.5), seed=0).volume.astype(np.float64)
    noisy = make_phantom(dataclasses.replace(flat, noise=0.1), seed=0).volume.astype(np.float64)
    gradient = lambda v: np.abs(np.diff(v, axis=2)).mean()  # noqa: E731
    assert gradient(blurred) < 0.8 * gradient(sharp)
    # noise of std 0.1 in units where fibre - pore = 1.1 spans 60 % of 255 grey levels
    assert np.std(noisy - sharp) == pytest.approx(0.1 * 0.6 * 255 / 1.1, rel=0.1)


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"shape": (128, 128)}, "shape"),
        ({"shape": (2, 64, 64)}, "shape"),
        ({"shape": (16.0, 64, 64)}, "shape"),
        ({"fibre_fraction": 1.0}, "fibre_fraction"),
        ({"fibre_fraction": -0.1}, "fibre_fraction"),
        ({"pore_fraction": 0.5}, "pore_fraction"),
        ({"fibre_radius": 0.0}, "fibre_radius"),
        ({"pore_radius": -1.0}, "pore_radius"),
        ({"fibre_radius_spread": 0.9}, "fibre_radius_spread"),
        ({"fibre_direction": (0.0, 0.0, 0.0)}, "fibre_direction"),
        ({"fibre_direction": (1.0, 0.0)}, "fibre_direction"),
        ({"fibre_alignment_spread": -0.1}, "fibre_alignment_spread"),
        ({"fibre_length": 0.0}, "fibre_length"),
        ({"pore_touching_fraction": 1.5}, "pore_touching_fraction"),
        ({"contrast": 0.0}, "contrast"),
        ({"pore_contrast": 1.5}, "pore_contrast"),
        ({"blur": -1.0}, "blur"),
        ({"noise": float("nan")}, "noise"),
        ({"noise": float("inf")}, "noise"),
        ({"ring_strength": -0.1}, "ring_strength"),
        ({"n_rings": -1}, "n_rings"),
        ({"n_rings": 2.5}, "n_rings"),
        ({"cupping": 1.0}, "cupping"),
        ({"grey_window": (0.8, 0.2)}, "grey_window"),
        ({"dtype": "float32"}, "dtype"),
    ],
)
def test_invalid_config_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PhantomConfig(**changes)  # type: ignore[arg-type]


def test_invalid_dtype_lists_the_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"uint8.*uint16"):
        PhantomConfig(dtype="int32")  # type: ignore[arg-type]


def test_make_phantom_rejects_bad_seed_and_config() -> None:
    with pytest.raises(ValueError, match="seed"):
        make_phantom(PhantomConfig(shape=SMALL), seed=-1)
    with pytest.raises(TypeError, match="PhantomConfig"):
        make_phantom({"shape": SMALL}, seed=0)  # type: ignore[arg-type]


def test_config_is_frozen_and_normalised() -> None:
    cfg = PhantomConfig(shape=[16, 32, 32], fibre_direction=(0, 3, 4))  # type: ignore[arg-type]
    assert cfg.shape == (16, 32, 32)
    assert cfg.fibre_direction == pytest.approx((0.0, 0.6, 0.8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.noise = 0.2  # type: ignore[misc]


# ---------------------------------------------------------------------------- random_config


def test_random_config_is_seeded_and_varied() -> None:
    a = [random_config(np.random.default_rng(11), shape=SMALL) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(12)
    draws = [random_config(rng, shape=SMALL) for _ in range(40)]
    assert all(d.shape == SMALL for d in draws)
    assert {d.dtype for d in draws} == {"uint8", "uint16"}
    for name in ("contrast", "noise", "blur", "ring_strength", "fibre_radius", "pore_radius"):
        values = [getattr(d, name) for d in draws]
        assert max(values) > 1.5 * min(values), name
    assert any(d.fibre_direction != (1.0, 0.0, 0.0) for d in draws)
    assert any(d.fibre_length is not None for d in draws) and any(
        d.fibre_length is None for d in draws
    )
    assert any(d.cupping > 0 for d in draws)


def test_default_config_lies_inside_the_random_domain() -> None:
    d = PhantomConfig()
    weaker = min(d.contrast, d.pore_contrast)
    derived = {
        "cnr": weaker / d.noise,
        "ring_ratio": d.ring_strength / weaker,
        "grey_window_low": d.grey_window[0],
        "grey_window_high": d.grey_window[1],
    }
    for name, (lo, hi) in RANDOM_CONFIG_RANGES.items():
        if name == "fibre_length":
            continue  # the default (None: fibres cross the volume) is one of random_config's choices
        value = derived[name] if name in derived else getattr(d, name)
        assert lo <= value <= hi, f"default {name}={value} outside [{lo}, {hi}]"


def test_random_configs_make_valid_phantoms() -> None:
    rng = np.random.default_rng(5)
    for i in range(3):
        ph = make_phantom(random_config(rng, shape=(16, 40, 40)), seed=i)
        assert ph.labels.shape == (16, 40, 40)
        assert set(np.unique(ph.labels).tolist()) <= {1, 2, 3}
        assert np.count_nonzero(ph.labels == 1) > 0.3 * ph.labels.size


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
