"""What every measure of a label volume shares: input checks, the progress event, JSON numbers.

labels (+ image, mask) -> :func:`check_labels` / :func:`check_same_shape` / :func:`phase_id`
-> a measure (fractions, objects, thickness, orientation, surfaces) yielding :class:`MeasureProgress`.
Every check raises a one-line ``ValueError`` that says what is wrong and what to do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import Cancelled, CancelToken

__all__ = [
    "MeasureProgress",
    "check_cancel",
    "check_ids",
    "check_labels",
    "check_same_shape",
    "json_number",
    "phase_id",
    "slab_ranges",
]


@dataclass(frozen=True)
class MeasureProgress:
    """Where a measure stands: its ``step`` (e.g. ``"fractions"``) and ``done`` of ``total`` units."""

    step: str
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


def check_cancel(cancel: CancelToken | None, what: str) -> None:
    """Raise :class:`~napari_tomoseg.core.progress.Cancelled` if ``cancel`` was set."""
    if cancel is not None and cancel.cancelled:
        raise Cancelled(f"{what} stopped")


def check_labels(labels: Any, name: str = "labels") -> tuple[int, int, int]:
    """The shape of a 3D integer label volume (any array that has ``shape`` and ``dtype``).

    Raises
    ------
    ValueError
        If it is not 3D or does not hold integers.
    """
    shape = tuple(int(s) for s in np.shape(labels))
    if len(shape) != 3:
        raise ValueError(f"the {name} must be a 3D volume (z, y, x), got shape {shape}")
    # not getattr(labels, "dtype", np.asarray(labels).dtype): the default would read a lazy volume
    dtype = np.dtype(labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise ValueError(
            f"the {name} hold {dtype} values, not integer phase ids; load a label volume "
            "(a segmentation) rather than a grey image, or convert it to integers"
        )
    return (shape[0], shape[1], shape[2])


def check_same_shape(shape: tuple[int, ...], other: Any, what: str, of: str = "labels") -> None:
    """Raise a ``ValueError`` if ``other`` (the ``what``, e.g. ``"mask"``) differs in shape."""
    if other is not None and tuple(np.shape(other)) != tuple(shape):
        raise ValueError(
            f"the {what} {tuple(np.shape(other))} and the {of} {tuple(shape)} differ in shape; "
            f"give a {what} that matches the {of} voxel for voxel"
        )


def check_ids(labels: npt.NDArray[Any], phases: PhaseTable, name: str = "labels") -> None:
    """Raise a ``ValueError`` if ``labels`` hold ids outside 0..C of the phase table."""
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi > len(phases):
        raise ValueError(ids_message(lo, hi, phases, name))


def ids_message(lo: int, hi: int, phases: PhaseTable, name: str = "labels") -> str:
    """The error message for ids ``lo..hi`` found where the phase table allows 0..C."""
    return (
        f"the {name} hold ids {lo}..{hi} but the phase table has ids 1..{len(phases)} "
        f"({', '.join(phases.names)}); give the phase table the labels were made with"
    )


def phase_id(phases: PhaseTable, phase: str | int) -> int:
    """The id of ``phase`` given by name (case-insensitive) or id.

    Raises
    ------
    ValueError
        If the table has no such phase, listing the phases it has.
    """
    if isinstance(phase, (int, np.integer)) and not isinstance(phase, bool):
        if int(phase) in phases.ids:
            return int(phase)
        raise ValueError(f"no phase with id {phase}; this table has {dict(_ids(phases))}")
    if isinstance(phase, str):
        return phases.id_of(phase)
    raise ValueError(f"a phase is a name or an id, got {phase!r}")


def _ids(phases: PhaseTable) -> list[tuple[str, int]]:
    return [(p.name, p.id) for p in phases.phases]


def json_number(v: Any) -> float | None:
    """A plain float, or None for a missing or undefined (NaN, infinite) number."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def slab_ranges(n: int, step: int) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges of ``step`` slices covering ``0..n``."""
    step = max(1, int(step))
    return [(a, min(a + step, n)) for a in range(0, n, step)]
