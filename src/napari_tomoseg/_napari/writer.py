"""napari writer (File > Save Selected Layers): a labels layer -> a label TIFF with its phase table.

layer data + ``metadata["tomoseg_phases"]`` + ``scale``/``units`` -> :func:`core.io.write_labels`
(uint8, zlib, phase names and colours and the voxel size in µm in the metadata; Fiji opens it).

napari's save dialog asks before it replaces an existing file, so the writer replaces a file it
is given (atomically: a failed write leaves the old file intact). Imports no Qt and no torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg.core.phases import PhaseTable

log = logging.getLogger(__name__)

__all__ = ["napari_write_labels", "voxel_size_um"]


def voxel_size_um(
    scale: Sequence[float], units: Sequence[Any] | None = None
) -> tuple[float, float, float] | None:
    """The voxel size ``(z, y, x)`` in µm from a layer's ``scale`` and ``units``, or None if unknown.

    Length units (pint units or strings such as ``"nm"``) are converted to µm. In pixel units
    (napari's default) napari-tomoseg's convention holds: its reader sets ``scale`` to the voxel
    size in µm, so a scale other than 1 is read as µm and a scale of all ones means "unknown".
    """
    s = tuple(float(v) for v in tuple(scale)[-3:])
    if len(s) != 3:
        return None
    if units is not None and len(tuple(units)) >= 3:
        factors = [_micrometres(u) for u in tuple(units)[-3:]]
        if all(f is not None for f in factors):
            return (s[0] * factors[0], s[1] * factors[1], s[2] * factors[2])  # type: ignore[operator]
    if all(abs(v - 1.0) < 1e-12 for v in s):
        return None
    return s[0], s[1], s[2]


def _micrometres(unit: Any) -> float | None:
    """µm per ``unit``, or None for pixels and anything that is not a length."""
    try:
        import pint

        q = 1 * unit if isinstance(unit, pint.Unit) else pint.Quantity(1, str(unit))
        return float(q.to("micrometer").magnitude)
    except Exception:  # pint's errors (undefined unit, pixel is dimensionless) all mean "no length"
        return None


def napari_write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """Write one labels layer as a label TIFF; returns the written path (napari's writer contract).

    Parameters
    ----------
    path
        ``.tif`` or ``.tiff`` file chosen in napari's save dialog.
    data
        The layer data: a 3D array of phase ids (0 = none).
    attributes
        The layer's state: ``metadata["tomoseg_phases"]`` (the phase table the widgets bind to a
        layer), ``scale`` and ``units`` (the voxel size).

    Returns
    -------
    list of str
        ``[path]`` when written; napari reports a failure when the list is empty.
    """
    from napari_tomoseg.core import io

    p = Path(path)
    if p.suffix.lower() not in (".tif", ".tiff"):
        p = p.with_name(p.name + ".tif")
    raw = (attributes.get("metadata") or {}).get("tomoseg_phases")
    phases = PhaseTable.from_json(raw) if raw else None
    arr = np.asarray(data[0] if attributes.get("multiscale") else data)
    voxel = voxel_size_um(attributes.get("scale") or (1, 1, 1), attributes.get("units"))
    written = io.write_labels(p, arr, phases=phases, voxel_size=voxel, overwrite=True)
    log.info("wrote labels layer %r to %s", attributes.get("name"), written)
    return [str(written)]
