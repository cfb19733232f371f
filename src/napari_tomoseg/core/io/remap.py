"""Bring another tool's label volume onto a phase table: ids such as 0/128/255 or 0-based -> 0..C.

label volume -> :func:`label_ids` (ids and voxel counts) -> :func:`guess_mapping` (a proposal the user
may edit) -> :func:`remap_labels` (uint8, 0 = not annotated, 1..C = phases).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["guess_mapping", "label_ids", "remap_labels"]


def label_ids(labels: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The distinct ids in an integer label volume and how many voxels hold each."""
    arr = np.asarray(labels)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"labels must hold integer ids, got dtype {arr.dtype}")
    ids, counts = np.unique(arr, return_counts=True)
    return ids.astype(np.int64), counts.astype(np.int64)


def guess_mapping(ids: npt.ArrayLike, n_phases: int) -> dict[int, int]:
    """A proposed ``{foreign id: phase id (0 = not annotated)}`` for ``n_phases`` phases.

    - ids already within 0..C: kept (0 = not annotated);
    - exactly C ids, 0-based without a background (0..C-1): shifted by one;
    - otherwise (e.g. 0/128/255): the smallest id becomes 0 if there are C + 1 ids, and the others
      take phases 1, 2, ... in increasing order; ids beyond the C-th phase map to 0.
    """
    values = sorted(int(i) for i in np.asarray(ids).ravel())
    if n_phases < 1:
        raise ValueError(f"n_phases must be >= 1, got {n_phases}")
    if (
        values
        and values[0] >= 0
        and values[-1] <= n_phases
        and not (len(values) == n_phases and values == list(range(n_phases)))
    ):
        return {v: v for v in values}
    if values == list(range(n_phases)):
        return {v: v + 1 for v in values}
    mapping: dict[int, int] = {}
    rest = values
    if len(values) == n_phases + 1:
        mapping[values[0]] = 0
        rest = values[1:]
    for k, v in enumerate(rest):
        mapping[v] = k + 1 if k < n_phases else 0
    return mapping


def remap_labels(labels: Any, mapping: Mapping[int, int], n_phases: int) -> npt.NDArray[np.uint8]:
    """``labels`` with every id replaced through ``mapping`` as uint8; unmapped ids become 0.

    Raises
    ------
    ValueError
        If a target is outside 0..``n_phases``.
    """
    bad = {k: v for k, v in mapping.items() if not 0 <= int(v) <= n_phases}
    if bad:
        raise ValueError(
            f"mapping targets {sorted(set(bad.values()))} are outside 0..{n_phases} "
            "(0 = not annotated, 1..C the phases)"
        )
    arr = np.asarray(labels)
    ids, inverse = np.unique(arr, return_inverse=True)
    lut = np.array([int(mapping.get(int(i), 0)) for i in ids], dtype=np.uint8)
    return lut[inverse].reshape(arr.shape)
