"""Physical units of measures: voxel sizes parsed from text, and the units every result carries.

``"2,1.3,1.3µm"`` -> :func:`parse_voxel_size` -> ``(2.0, 1.3, 1.3)`` µm -> :class:`Units` -> lengths,
areas and volumes in µm, µm², µm³ (or in voxels when the voxel size is unknown, and then said so).

Voxel sizes are ``(z, y, x)`` in micrometres throughout, as in :mod:`napari_tomoseg.core.io.metadata`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from napari_tomoseg.core.io.metadata import LENGTH_UNITS_UM
from napari_tomoseg.core.model.modes import AXIS_NAMES as AXES  # axis names in array order

__all__ = ["AXES", "Units", "parse_axis", "parse_voxel_size"]

# Micrometres per unit: the units voxel sizes are read in from files, and none (default µm).
_UNIT_TO_UM = {"": 1.0, **LENGTH_UNITS_UM}
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TEXT = re.compile(rf"^\s*({_NUMBER}(?:\s*[,;x×]\s*{_NUMBER}){{0,2}})\s*([^\d\s.,;+-][^\s]*)?\s*$")
_HOW = (
    "write one number or three (z,y,x), with an optional unit (um, µm, nm, mm; default µm), "
    "e.g. '1.3', '1.3um', '2,1.3,1.3µm' or '0.5 mm'"
)


def parse_voxel_size(
    value: str | float | Sequence[float] | Sequence[str],
) -> tuple[float, float, float]:
    """A voxel size ``(z, y, x)`` in µm from text or numbers.

    Parameters
    ----------
    value : str, float or sequence of 3 floats
        ``"1.3"``, ``"1.3um"``, ``"2,1.3,1.3µm"``, ``"1.3 nm"``, ``"0.5mm"``; one number is used for
        all three axes; numbers without a unit are in µm. A number or a sequence of numbers is
        taken as µm.

    Returns
    -------
    tuple of 3 float
        ``(z, y, x)`` in µm, each finite and > 0.

    Raises
    ------
    ValueError
        If the text cannot be read, the unit is unknown, or a size is zero, negative or not finite;
        the message says what to write.

    Examples
    --------
    >>> parse_voxel_size("2,1.3,1.3µm")
    (2.0, 1.3, 1.3)
    >>> parse_voxel_size("0.5mm")
    (500.0, 500.0, 500.0)
    """
    if isinstance(value, bool):
        raise ValueError(f"voxel size {value!r} is not a length; {_HOW}")
    if isinstance(value, (int, float)):
        numbers = [float(value)]
        factor = 1.0
    elif isinstance(value, str):
        match = _TEXT.match(value)
        if match is None:
            raise ValueError(f"cannot read the voxel size {value!r}; {_HOW}")
        numbers = [float(v) for v in re.split(r"\s*[,;x×]\s*", match.group(1))]
        unit = (match.group(2) or "").strip().lower().replace("\u00b5", "µ")
        if unit not in _UNIT_TO_UM:
            raise ValueError(f"unknown unit {match.group(2)!r} in voxel size {value!r}; {_HOW}")
        factor = _UNIT_TO_UM[unit]
    else:
        try:
            numbers = [float(v) for v in value]
        except (TypeError, ValueError) as err:
            raise ValueError(f"cannot read the voxel size {value!r}; {_HOW}") from err
        factor = 1.0
    if len(numbers) == 1:
        numbers = numbers * 3
    if len(numbers) != 3:
        raise ValueError(f"voxel size {value!r} has {len(numbers)} numbers; {_HOW}")
    if not all(math.isfinite(v) and v > 0 for v in numbers):
        raise ValueError(f"voxel size {value!r} must be positive and finite; {_HOW}")
    z, y, x = (v * factor for v in numbers)
    return (z, y, x)


def parse_axis(axis: str | int) -> int:
    """The array axis (0, 1, 2) of ``"z"``, ``"y"``, ``"x"`` (or of 0, 1, 2 themselves).

    Raises
    ------
    ValueError
        For anything else, naming the allowed values.
    """
    if isinstance(axis, str) and axis.strip().lower() in AXES:
        return AXES.index(axis.strip().lower())
    if isinstance(axis, int) and not isinstance(axis, bool) and axis in (0, 1, 2):
        return int(axis)
    raise ValueError(f"axis must be 'z', 'y' or 'x' (or 0, 1, 2), got {axis!r}")


@dataclass(frozen=True)
class Units:
    """The physical scale of a label volume: voxel size in µm, or None for "lengths in voxels".

    Attributes
    ----------
    voxel_size : (z, y, x) in µm, or None
        Without it every length is in voxel edges, every area in voxel faces, every volume in
        voxels, and :attr:`length` etc. say so.
    """

    voxel_size: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.voxel_size is not None:
            object.__setattr__(self, "voxel_size", parse_voxel_size(self.voxel_size))

    @classmethod
    def of(cls, voxel_size: Any) -> Units:
        """Units from None, a :class:`Units`, numbers or text (see :func:`parse_voxel_size`)."""
        if isinstance(voxel_size, Units):
            return voxel_size
        return cls(None if voxel_size is None else parse_voxel_size(voxel_size))

    @property
    def calibrated(self) -> bool:
        """True when lengths are in µm."""
        return self.voxel_size is not None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel edge lengths ``(z, y, x)`` in :attr:`length` units (1, 1, 1 without a voxel size)."""
        return self.voxel_size if self.voxel_size is not None else (1.0, 1.0, 1.0)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in :attr:`volume` units."""
        z, y, x = self.spacing
        return z * y * x

    @property
    def length(self) -> str:
        """Unit of lengths: ``"µm"`` or ``"voxel"``."""
        return "µm" if self.calibrated else "voxel"

    @property
    def area(self) -> str:
        """Unit of areas: ``"µm²"`` or ``"voxel²"`` (voxel faces)."""
        return "µm²" if self.calibrated else "voxel²"

    @property
    def volume(self) -> str:
        """Unit of volumes: ``"µm³"`` or ``"voxel³"`` (voxels)."""
        return "µm³" if self.calibrated else "voxel³"

    @property
    def per_length(self) -> str:
        """Unit of areas per volume (specific surface): ``"1/µm"`` or ``"1/voxel"``."""
        return "1/µm" if self.calibrated else "1/voxel"

    def to_dict(self) -> dict[str, Any]:
        """The units as JSON: voxel size (list or None) and the unit of lengths, areas, volumes."""
        return {
            "voxel_size": None if self.voxel_size is None else list(self.voxel_size),
            "length": self.length,
            "area": self.area,
            "volume": self.volume,
        }
