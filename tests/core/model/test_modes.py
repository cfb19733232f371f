"""The mode vocabulary: which modes a network runs, the errors, what a fine-tune makes; no torch."""

import subprocess
import sys
from dataclasses import dataclass

import pytest

from napari_tomoseg.core.model.modes import (
    AXES,
    AXIS_NAMES,
    MODES,
    axis_index,
    check_mode,
    finetuned_mode,
    mode_family,
    runnable_modes,
)


@dataclass(frozen=True)
class Net:
    ndim: int
    in_channels: int


@pytest.mark.parametrize(
    ("net", "modes"),
    [
        (Net(3, 1), ("3d",)),
        (Net(2, 1), ("2d", "2d-3axes")),
        (Net(2, 5), ("2d-3axes", "2.5d")),
    ],
)
def test_runnable_modes_are_exactly_those_check_mode_accepts(net, modes):
    assert runnable_modes(net) == modes
    for mode in MODES:
        if mode in modes:
            assert check_mode(mode, net) == mode
        else:
            with pytest.raises(ValueError, match="--mode"):
                check_mode(mode, net)


def test_check_mode_messages_suggest_the_models_own_mode():
    with pytest.raises(ValueError, match=r"needs a 3D model; this model is 2D \(use --mode 2.5d\)"):
        check_mode("3d", Net(2, 3), default="2.5d")
    with pytest.raises(ValueError, match="takes 3 input channel"):
        check_mode("2d", Net(2, 3))
    with pytest.raises(ValueError, match="needs a 2D model"):
        check_mode("2d-3axes", Net(3, 1))
    with pytest.raises(ValueError, match="mode must be one of"):
        check_mode("4d", Net(2, 1))


def test_axes_vocabulary():
    assert AXIS_NAMES == ("z", "y", "x") and AXES == {"z": 0, "y": 1, "x": 2}
    assert [axis_index(a) for a in ("z", "y", "x", 0, 2)] == [0, 1, 2, 0, 2]
    for bad in ("w", 3, -1, True):
        with pytest.raises(ValueError, match="axis must be one of"):
            axis_index(bad)


@pytest.mark.parametrize(
    ("base", "net", "requested", "expected"),
    [
        (None, None, None, ("2d", False)),
        (None, None, "3d", ("3d", False)),
        ("2d", Net(2, 1), None, ("2.5d", True)),
        ("2d", Net(2, 1), "2.5d", ("2.5d", True)),
        ("2d", Net(2, 1), "2d", ("2d", False)),
        ("2d-3axes", Net(2, 1), None, ("2.5d", True)),
        ("2d-3axes", Net(2, 1), "2d", ("2d-3axes", False)),
        ("2.5d", Net(2, 5), None, ("2.5d", False)),
        ("3d", Net(3, 1), None, ("3d", False)),
    ],
)
def test_finetuned_mode(base, net, requested, expected):
    assert finetuned_mode(base, net, requested) == expected


@pytest.mark.parametrize(
    ("base", "net", "requested"), [("3d", Net(3, 1), "2d"), ("2.5d", Net(2, 5), "3d")]
)
def test_finetuned_mode_refuses_another_family(base, net, requested):
    with pytest.raises(ValueError, match="cannot be fine-tuned in mode"):
        finetuned_mode(base, net, requested)
    assert mode_family(base) != mode_family(requested)


def test_the_vocabulary_imports_without_torch():
    code = "import napari_tomoseg.core.model as m, sys; m.MODES; m.runnable_modes; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
    code = "from napari_tomoseg.core.model import TomosegModel; print(TomosegModel.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "napari_tomoseg.core.model.files"
