"""Voxel sizes from text, axes, and the units results carry."""

from __future__ import annotations

import pytest

from napari_tomoseg.core.measure.units import Units, parse_axis, parse_voxel_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.3", (1.3, 1.3, 1.3)),
        ("1.3um", (1.3, 1.3, 1.3)),
        ("2,1.3,1.3µm", (2.0, 1.3, 1.3)),
        ("2, 1.3, 1.3 μm", (2.0, 1.3, 1.3)),
        ("1300 nm", (1.3, 1.3, 1.3)),
        ("0.5mm", (500.0, 500.0, 500.0)),
        (1.5, (1.5, 1.5, 1.5)),
        ((2, 1, 1), (2.0, 1.0, 1.0)),
    ],
)
def test_parse_voxel_size(text, expected):
    assert parse_voxel_size(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    "bad", ["0", "-1.3", "abc", "1.3 furlong", "1,2", "1,2,3,4", "nan", "", True]
)
def test_bad_voxel_size_says_what_to_write(bad):
    with pytest.raises(ValueError, match=r"e\.g\. '1\.3'"):
        parse_voxel_size(bad)


def test_axis():
    assert [parse_axis(a) for a in ("z", "Y", "x", 0, 2)] == [0, 1, 2, 0, 2]
    with pytest.raises(ValueError, match="'z', 'y' or 'x'"):
        parse_axis("w")
    with pytest.raises(ValueError):
        parse_axis(3)


def test_units_without_voxel_size_are_voxels():
    u = Units.of(None)
    assert (u.length, u.area, u.volume, u.voxel_volume) == ("voxel", "voxel²", "voxel³", 1.0)
    c = Units.of("2,1,1.5um")
    assert (c.length, c.volume) == ("µm", "µm³")
    assert c.voxel_volume == pytest.approx(3.0)
    assert c.to_dict()["voxel_size"] == [2.0, 1.0, 1.5]
