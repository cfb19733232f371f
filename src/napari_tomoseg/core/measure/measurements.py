"""Every measure of a label volume in one run, as the ``tomoseg measure`` command and the Measure widget
ask for it: one result, one summary, one JSON object, one CSV per measure.

labels (+ image, mask) + :class:`MeasureOptions` (what, phases, axis, voxel size) -> :func:`iter_measurements`
(fractions and profile in one streaming pass, then objects and local thickness per phase, fibre
orientation, surfaces) -> :class:`Measurements` -> :meth:`~Measurements.summary_table` /
:meth:`~Measurements.to_dict` / :meth:`~Measurements.csv_texts` -> :func:`write_csvs` (atomic, never over
an existing file unless asked).

Both front ends call these, so the numbers, the JSON and the CSV files of the CLI and the widget are
the same.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg import __version__
from napari_tomoseg.core.measure.fractions import PhaseFractions, PhaseProfile, iter_fractions
from napari_tomoseg.core.measure.inputs import (
    MeasureProgress,
    check_cancel,
    check_labels,
    check_same_shape,
    json_number,
)
from napari_tomoseg.core.measure.objects import BYTES_PER_VOXEL as OBJECT_BYTES_PER_VOXEL
from napari_tomoseg.core.measure.objects import DEFAULT_MAX_MEMORY, ObjectTable, iter_objects
from napari_tomoseg.core.measure.orientation import FibreOrientation, iter_fibre_orientation
from napari_tomoseg.core.measure.report import table_to_csv
from napari_tomoseg.core.measure.surfaces import SurfaceAreas, iter_surface_areas
from napari_tomoseg.core.measure.thickness import BYTES_PER_VOXEL as THICKNESS_BYTES_PER_VOXEL
from napari_tomoseg.core.measure.thickness import LocalThickness, iter_local_thickness
from napari_tomoseg.core.measure.units import AXES, Units, parse_axis
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.progress import CancelToken, run_to_completion

__all__ = [
    "FIBRE_NAMES",
    "MEASURES",
    "STREAMING_MEASURES",
    "MeasureOptions",
    "Measurements",
    "csv_paths",
    "iter_measurements",
    "measure_all",
    "orientation_phases",
    "parse_what",
    "write_csvs",
]

#: Every measure, in the order they run and are reported.
MEASURES: tuple[str, ...] = (
    "fractions",
    "profile",
    "objects",
    "thickness",
    "orientation",
    "surface",
)
#: Measures whose memory does not grow with the volume (slabs read one after another).
STREAMING_MEASURES: tuple[str, ...] = ("fractions", "profile", "orientation", "surface")
#: Phase names taken for "the fibre phase" when no phase is named for the orientation.
FIBRE_NAMES: tuple[str, ...] = ("fibre", "fibres", "fiber", "fibers")
_ALIASES = {
    "fraction": "fractions",
    "profiles": "profile",
    "object": "objects",
    "sizes": "objects",
    "size": "objects",
    "orientations": "orientation",
    "surfaces": "surface",
    "area": "surface",
    "areas": "surface",
}
# Each measure counts this many progress units, so one bar covers the whole run.
_UNITS_PER_STEP = 1000


def parse_what(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """The measures asked for, in :data:`MEASURES` order.

    Parameters
    ----------
    value : str, sequence of str or None
        ``"fractions,profile"``, ``["objects", "thickness"]``, ``"all"``; None means every measure.
        Plural and singular spellings are both accepted (``surfaces``, ``sizes`` for objects).

    Raises
    ------
    ValueError
        For an unknown measure or an empty list, naming the measures there are.
    """
    if value is None:
        return MEASURES
    words = re.split(r"[\s,;]+", value) if isinstance(value, str) else list(value)
    words = [w.strip().lower() for w in words if w and w.strip()]
    choose = f"choose from {', '.join(MEASURES)} (comma-separated) or all"
    if not words:
        raise ValueError(f"no measure named; {choose}")
    chosen: set[str] = set()
    for w in words:
        if w == "all":
            chosen.update(MEASURES)
            continue
        name = _ALIASES.get(w, w)
        if name not in MEASURES:
            raise ValueError(f"unknown measure {w!r}; {choose}")
        chosen.add(name)
    return tuple(m for m in MEASURES if m in chosen)


@dataclass(frozen=True)
class MeasureOptions:
    """What to measure and how.

    Attributes
    ----------
    what : tuple of str
        Measures from :data:`MEASURES` (text is parsed by :func:`parse_what`).
    phases : tuple of str
        Phases whose objects, thickness and surfaces are measured (empty: every phase). Fractions
        are always of every phase.
    orientation : tuple of str or None
        Phases whose fibre orientation is measured; None: see :func:`orientation_phases`.
    axis : {"z", "y", "x"}
        Axis of the profile and reference axis of the orientation angles.
    slab : int
        Slices per profile bin.
    connectivity : {6, 26}
        Neighbours that join voxels into one object.
    fibre_radius : float or None
        Fibre radius in the length unit of the measurement (µm, or voxels without a voxel size);
        sets the structure tensor's integration scale (default 4 voxels).
    size_bins : int
        Bins of the size distribution.
    max_memory : int
        Budget in bytes of each in-memory measure (objects, local thickness).
    """

    what: tuple[str, ...] = MEASURES
    phases: tuple[str, ...] = ()
    orientation: tuple[str, ...] | None = None
    axis: str = "z"
    slab: int = 1
    connectivity: int = 26
    fibre_radius: float | None = None
    size_bins: int = 20
    max_memory: int = DEFAULT_MAX_MEMORY

    def __post_init__(self) -> None:
        object.__setattr__(self, "what", parse_what(self.what))
        object.__setattr__(self, "axis", AXES[parse_axis(self.axis)])
        object.__setattr__(self, "phases", tuple(self.phases))
        if self.orientation is not None:
            object.__setattr__(self, "orientation", tuple(self.orientation))
        if not isinstance(self.slab, (int, np.integer)) or self.slab < 1:
            raise ValueError(f"slab must be a whole number of slices >= 1, got {self.slab!r}")
        if self.connectivity not in (6, 26):
            raise ValueError(f"connectivity must be 6 or 26, got {self.connectivity!r}")
        if self.fibre_radius is not None and not (
            math.isfinite(self.fibre_radius) and self.fibre_radius > 0
        ):
            raise ValueError(f"the fibre radius must be a positive length, got {self.fibre_radius}")
        if not isinstance(self.size_bins, (int, np.integer)) or self.size_bins < 1:
            raise ValueError(f"size_bins must be >= 1, got {self.size_bins!r}")


def _resolve(phases: PhaseTable, names: Sequence[str]) -> tuple[str, ...]:
    """The table's spelling of each phase name (case-insensitive), without repeats."""
    out: list[str] = []
    for n in names:
        name = phases.names[phases.id_of(str(n).strip()) - 1]
        if name not in out:
            out.append(name)
    return tuple(out)


def orientation_phases(phases: PhaseTable, given: Sequence[str] = ()) -> tuple[str, ...]:
    """The phases whose fibre orientation is measured: the phase named as in :data:`FIBRE_NAMES`
    when the table has one, else the phases the user ``given`` by name, else none."""
    fibre = [n for n in phases.names if n.lower() in FIBRE_NAMES]
    if fibre:
        return (fibre[0],)
    return _resolve(phases, given)


@dataclass(frozen=True, eq=False)
class Measurements:
    """The measures of one label volume.

    Attributes
    ----------
    name : str
        What was measured (a file or a layer name).
    phases : PhaseTable
    units : Units
    shape : (z, y, x)
    options : MeasureOptions
    selected : tuple of str
        The phases measured (objects, thickness, surfaces).
    fractions : PhaseFractions or None
        With the profile when it was asked for.
    objects, thickness, orientation : dict of phase name -> result
    surfaces : SurfaceAreas or None
    notes : tuple of str
        What the numbers cannot tell (empty phases, no fibre phase, lengths in voxels).
    image, mask : str or None
        Names of the grey volume and of the mask used, if any.
    """

    name: str
    phases: PhaseTable
    units: Units
    shape: tuple[int, int, int]
    options: MeasureOptions
    selected: tuple[str, ...]
    fractions: PhaseFractions | None = None
    objects: dict[str, ObjectTable] = field(default_factory=dict)
    thickness: dict[str, LocalThickness] = field(default_factory=dict)
    orientation: dict[str, FibreOrientation] = field(default_factory=dict)
    surfaces: SurfaceAreas | None = None
    notes: tuple[str, ...] = ()
    image: str | None = None
    mask: str | None = None

    @property
    def profile(self) -> PhaseProfile | None:
        """The fraction profile along the axis, when it was measured."""
        if "profile" not in self.options.what or self.fractions is None:
            return None
        return self.fractions.profile

    # ---------------------------------------------------------------------------------------
    def summary_table(self) -> tuple[list[str], list[list[Any]]]:
        """One row per phase: fraction, volume, objects, mean diameter, mean thickness, surface;
        units in the column names, None where a measure was not taken."""
        u = self.units
        what = self.options.what
        header = ["phase"]
        if "fractions" in what:
            header += ["fraction", f"volume ({u.volume})"]
        if "objects" in what:
            header += ["objects", f"mean diameter ({u.length})"]
        if "thickness" in what:
            header += [f"mean thickness ({u.length})"]
        if "surface" in what:
            header += [f"surface ({u.area})", f"surface per volume ({u.per_length})"]
        header.append("note")
        rows: list[list[Any]] = []
        for i, name in enumerate(self.phases.names):
            row: list[Any] = [name]
            notes: list[str] = []
            if "fractions" in what and self.fractions is not None:
                row += [json_number(self.fractions.fractions[i]), float(self.fractions.volumes[i])]
                if self.fractions.counts[i + 1] == 0:
                    notes.append("empty")
            if "objects" in what:
                obj = self.objects.get(name)
                if obj is None:
                    row += [None, None]
                else:
                    d = obj.equivalent_diameter
                    row += [len(obj), json_number(d.mean()) if d.size else None]
            if "thickness" in what:
                lt = self.thickness.get(name)
                row.append(None if lt is None else lt.mean)
            if "surface" in what:
                s = self.surfaces
                row += (
                    [None, None]
                    if s is None
                    else [float(s.area[i]), json_number(s.specific_surface[i])]
                )
            if "fractions" not in what and self._empty(name):
                notes.append("empty")
            row.append("; ".join(dict.fromkeys(notes)))
            rows.append(row)
        return header, rows

    def _empty(self, name: str) -> bool:
        for res in (self.objects.get(name), self.thickness.get(name)):
            if res is not None and res.note:
                return True
        return False

    def summary_text(self) -> str:
        """The summary for a terminal: a title, the per-phase table, orientation, interfaces, notes."""
        header, rows = self.summary_table()
        cells = [header] + [[_cell(v, header[c]) for c, v in enumerate(r)] for r in rows]
        if all(r[-1] == "" for r in rows):  # no note anywhere: drop the column
            cells = [r[:-1] for r in cells]
        z, y, x = self.shape
        lines = [f"{self.name}: {z} x {y} x {x} voxels; {self._units_text()}"]
        if len(cells[0]) > 1:
            lines += ["", *_align(cells)]
        profile = self.profile
        if profile is not None and len(profile.positions):
            f = profile.fractions
            spans = []
            for j, name in enumerate(self.phases.names):
                col = f[:, j][np.isfinite(f[:, j])]
                if col.size:
                    spans.append(f"{name} {100 * col.min():.1f}-{100 * col.max():.1f} %")
            lines += [
                "",
                f"profile along {profile.axis}: {len(profile.positions)} bins of {profile.slab} "
                f"slice(s); " + ", ".join(spans),
            ]
        for name, ori in self.orientation.items():
            lines += ["", *self._orientation_lines(name, ori)]
        if self.surfaces is not None and self.surfaces.interface:
            lines.append("")
            for (a, b), area in self.surfaces.interface.items():
                per = area / self.surfaces.volume if self.surfaces.volume else float("nan")
                lines.append(
                    f"interface {a} / {b}: {area:.6g} {self.units.area} "
                    f"({per:.4g} {self.units.per_length})"
                )
        if self.notes:
            lines += ["", *(f"note: {n}" for n in self.notes)]
        return "\n".join(lines)

    def _orientation_lines(self, name: str, ori: FibreOrientation) -> list[str]:
        u = self.units.length
        head = (
            f"orientation of {name} (structure tensor on the "
            f"{'grey image' if ori.source == 'image' else 'labels'}; noise scale "
            f"{ori.noise_scale:.3g} {u}, integration scale {ori.integration_scale:.3g} {u}; "
            f"{ori.voxels:,} voxels)"
        )
        if ori.voxels == 0:
            return [head, f"  {ori.note}"]
        t = ori.tensor
        mat = "; ".join(" ".join(f"{v:7.4f}" for v in row) for row in t)
        p = ori.principal_direction
        cos = abs(float(p[AXES.index(ori.axis)]))
        angle = math.degrees(math.acos(min(1.0, cos)))
        return [
            head,
            f"  a (z, y, x) = [{mat}]",
            f"  eigenvalues {', '.join(f'{v:.4f}' for v in ori.eigenvalues)}; principal "
            f"direction (z, y, x) = ({', '.join(f'{v:.3f}' for v in p)}), {angle:.1f}° from "
            f"{ori.axis}",
        ]

    def _units_text(self) -> str:
        if self.units.voxel_size is None:
            return "lengths in voxels (no voxel size known)"
        z, y, x = self.units.voxel_size
        return f"voxel size (z, y, x) = {z:g}, {y:g}, {x:g} µm"

    # ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Everything as JSON: unrounded numbers, fractions of 1, tensors as 3x3 lists in (z, y, x)
        order, None (JSON null) for undefined numbers; measures not taken are None."""
        what = self.options.what
        fractions = None
        if "fractions" in what and self.fractions is not None:
            fractions = self.fractions.to_dict()
            fractions.pop("profile", None)
        out: dict[str, Any] = {
            "software": f"napari-tomoseg {__version__}",
            "volume": self.name,
            "image": self.image,
            "mask": self.mask,
            "shape": list(self.shape),
            "units": self.units.to_dict(),
            "phases": [{"id": p.id, "name": p.name} for p in self.phases.phases],
            "measured_phases": list(self.selected),
            "what": list(what),
            "axis": self.options.axis,
            "notes": list(self.notes),
            "fractions": fractions,
            "profile": None if self.profile is None else self.profile.to_dict(),
            "objects": {k: v.to_dict() for k, v in self.objects.items()}
            if "objects" in what
            else None,
            "thickness": {k: v.to_dict() for k, v in self.thickness.items()}
            if "thickness" in what
            else None,
            "orientation": {k: v.to_dict() for k, v in self.orientation.items()}
            if "orientation" in what
            else None,
            "surface": None if self.surfaces is None else self.surfaces.to_dict(),
        }
        return _finite(out)

    def tables(self) -> dict[str, tuple[list[str], list[list[Any]]]]:
        """One table ``(header, rows)`` per measure taken, keyed by the measure's name."""
        out: dict[str, tuple[list[str], list[list[Any]]]] = {}
        what = self.options.what
        if "fractions" in what and self.fractions is not None:
            out["fractions"] = _rows_table(self.fractions.to_rows())
        if self.profile is not None:
            out["profile"] = _rows_table(self.profile.to_rows())
        if "objects" in what:
            out["objects"] = _rows_table([r for t in self.objects.values() for r in t.to_rows()])
        if "thickness" in what:
            out["thickness"] = _rows_table(
                [r for t in self.thickness.values() for r in t.to_rows()]
            )
        if "orientation" in what:
            out["orientation"] = _rows_table(
                [r for name, o in self.orientation.items() for r in _orientation_rows(name, o)]
            )
        if "surface" in what and self.surfaces is not None:
            out["surface"] = _rows_table(self.surfaces.to_rows())
        return out

    def csv_texts(self) -> dict[str, str]:
        """One CSV text per measure taken: ``#`` header lines (software and version, volume, phases,
        units, what the numbers are) then the table. Keys are the measures' names."""
        texts = {}
        for measure, (header, rows) in self.tables().items():
            lines = [f"# napari-tomoseg {__version__}: {measure}", *self._csv_header(measure)]
            body = table_to_csv(header, rows) if header else ""
            texts[measure] = "".join(f"{line}\n" for line in lines) + body
        return texts

    def _csv_header(self, measure: str) -> list[str]:
        z, y, x = self.shape
        u = self.units
        lines = [f"# volume: {self.name} ({z} x {y} x {x} voxels, z y x)"]
        if self.image:
            lines.append(f"# image: {self.image}")
        if self.mask and measure in ("fractions", "profile"):
            lines.append(f"# mask: {self.mask} (the '... in mask' columns and the profile)")
        lines.append(
            "# phases: "
            + ", ".join(f"{p.id} = {p.name}" for p in self.phases.phases)
            + " (0: none)"
        )
        if u.voxel_size is None:
            lines.append(
                "# units: voxels (no voxel size known): lengths in voxel edges, areas in voxel "
                "faces (voxel²), volumes in voxels (voxel³)"
            )
        else:
            vz, vy, vx = u.voxel_size
            lines.append(
                f"# units: lengths in {u.length}, areas in {u.area}, volumes in {u.volume}; "
                f"voxel size (z, y, x) = {vz!r}, {vy!r}, {vx!r} µm"
            )
        explain = {
            "fractions": "# fractions are of 1, of the labelled voxels (id 0 counts in no phase)",
            "profile": f"# fraction of each phase per bin of {self.options.slab} slice(s) along "
            f"{self.options.axis}; positions are bin centres from the volume's first face",
            "objects": f"# connected objects ({self.options.connectivity}-connectivity) of "
            f"{', '.join(self.objects) or 'no phase'}; 'touches border': cut by the volume's faces",
            "thickness": "# local thickness: diameter of the largest sphere inside the phase that "
            "covers a voxel; histogram of the phase's voxels",
            "orientation": "# orientation tensor a_ij = <p_i p_j> of the local fibre axis p over the "
            "phase's voxels (trace 1), whole volume then per block; (z, y, x) order",
            "surface": "# areas by marching cubes on each phase's smoothed indicator; "
            "'a / b' rows are interfaces between two phases",
        }
        lines.append(explain[measure])
        if measure == "thickness":
            for name, lt in self.thickness.items():
                stats = (
                    lt.note
                    if lt.note
                    else f"mean {lt.mean!r}, median {lt.median!r}, maximum {lt.maximum!r} "
                    f"{u.length}"
                )
                lines.append(f"# {name}: {stats}")
        if measure == "orientation":
            for name, o in self.orientation.items():
                if o.voxels:
                    lines.append(
                        f"# {name}: eigenvalues {o.eigenvalues.tolist()}, principal direction "
                        f"(z, y, x) {o.principal_direction.tolist()}, noise scale "
                        f"{o.noise_scale!r} {u.length}, integration scale {o.integration_scale!r} "
                        f"{u.length}, on the {'grey image' if o.source == 'image' else 'labels'}"
                    )
        lines += [f"# note: {n}" for n in self._notes_for(measure)]
        return lines

    def _notes_for(self, measure: str) -> list[str]:
        by_measure: dict[str, dict[str, Any]] = {
            "objects": dict(self.objects),
            "thickness": dict(self.thickness),
            "orientation": dict(self.orientation),
        }
        results = by_measure.get(measure, {})
        notes = [r.note for r in results.values() if getattr(r, "note", "")]
        if measure == "orientation" and not self.orientation:
            notes += [n for n in self.notes if "orientation" in n]
        return notes


def _orientation_rows(name: str, o: FibreOrientation) -> list[dict[str, Any]]:
    def row(region: str, origin: Sequence[Any], voxels: int, t: Any) -> dict[str, Any]:
        r: dict[str, Any] = {
            "phase": name,
            "region": region,
            "block z0": origin[0],
            "block y0": origin[1],
            "block x0": origin[2],
            "voxels": voxels,
        }
        for a in range(3):
            for b in range(a, 3):
                r[f"a_{AXES[a]}{AXES[b]}"] = json_number(t[a, b])
        return r

    rows = [row("whole volume", (None, None, None), o.voxels, o.tensor)]
    rows += [
        row(
            f"block of {o.block}",
            [int(v) for v in o.block_origin[i]],
            int(o.block_voxels[i]),
            o.block_tensors[i],
        )
        for i in range(len(o.block_voxels))
    ]
    return rows


def _rows_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    header: list[str] = []
    for r in rows:
        header += [k for k in r if k not in header]
    return header, [[r.get(k) for k in header] for r in rows]


def _finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return json_number(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if column == "fraction":
        return f"{100 * value:.2f} %"
    return f"{value:.4g}"


def _align(cells: list[list[str]]) -> list[str]:
    """Rows of text cells as lines: names and notes left-aligned, numbers right-aligned."""
    widths = [max(len(row[c]) for row in cells) for c in range(len(cells[0]))]
    last = len(widths) - 1
    left = {0} | ({last} if cells[0][last] == "note" else set())
    return [
        "  ".join(
            f"{cell:<{widths[c]}}" if c in left else f"{cell:>{widths[c]}}"
            for c, cell in enumerate(row)
        ).rstrip()
        for row in cells
    ]


# --------------------------------------------------------------------------------------------


def iter_measurements(
    labels: Any,
    *,
    phases: PhaseTable,
    options: MeasureOptions | None = None,
    image: Any = None,
    mask: Any = None,
    voxel_size: Any = None,
    name: str = "labels",
    image_name: str | None = None,
    mask_name: str | None = None,
    cancel: CancelToken | None = None,
) -> Generator[MeasureProgress, None, Measurements]:
    """Take the measures ``options`` asks for, one after another.

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids 1..C, 0 unlabelled; any array that slices like numpy (zarr, memory map, lazy
        TIFF). Fractions, profile, orientation and surfaces read it slab by slab; objects and
        local thickness hold one phase of it in memory (up to ``options.max_memory``).
    phases : PhaseTable
    options : MeasureOptions, optional
        Default: every measure of every phase along z.
    image : array, shape (z, y, x), optional
        The grey volume: the orientation is then computed on it.
    mask : array of bool, shape (z, y, x), optional
        Adds fractions inside it; the profile is then measured inside it.
    voxel_size : str, float, (z, y, x) or Units, optional
        In µm; without it every length is in voxels and the result says so.
    name, image_name, mask_name : str
        What the inputs are called in the summary, the JSON and the CSV headers.
    cancel : CancelToken, optional
        Checked between slabs and between measures.

    Yields
    ------
    MeasureProgress
        Step ``"<measure>"`` or ``"<measure> of <phase>"``; ``done`` of ``total`` over the whole run.

    Returns
    -------
    Measurements

    Raises
    ------
    ValueError
        Before any measure runs: labels that are not 3D integers, an image or mask of another
        shape, an unknown phase, a measure over the memory budget (the message names it and
        suggests a crop or the streaming measures). While measuring: ids outside the phase table.
    Cancelled
        When ``cancel`` is set.
    """
    options = options or MeasureOptions()
    shape = check_labels(labels)
    check_same_shape(shape, image, "image")
    check_same_shape(shape, mask, "mask")
    units = Units.of(voxel_size)
    what = options.what
    selected = _resolve(phases, options.phases) or phases.names
    notes: list[str] = []
    if not units.calibrated:
        notes.append("no voxel size: lengths, areas and volumes are in voxels")
    oriented: tuple[str, ...] = ()
    if "orientation" in what:
        oriented = (
            _resolve(phases, options.orientation)
            if options.orientation is not None
            else orientation_phases(phases, options.phases)
        )
        if not oriented:
            notes.append(
                "orientation: no phase named 'fibre'; name the fibre phase to measure its "
                "orientation"
            )
    _check_budget(shape, what, options.max_memory)

    # Every generator is built and started before the first one runs, so that bad input (an
    # unknown phase, a bad option) fails at once rather than after minutes of other measures.
    steps: list[tuple[str, str | None, Generator[MeasureProgress, None, Any]]] = []
    if "fractions" in what or "profile" in what:
        steps.append(
            (
                "fractions",
                None,
                iter_fractions(
                    labels,
                    phases=phases,
                    mask=mask,
                    axis=options.axis if "profile" in what else None,
                    slab=options.slab,
                    voxel_size=units,
                    cancel=cancel,
                ),
            )
        )
    for phase in selected if "objects" in what else ():
        steps.append(
            (
                "objects",
                phase,
                iter_objects(
                    labels,
                    phase,
                    phases=phases,
                    connectivity=26 if options.connectivity == 26 else 6,
                    voxel_size=units,
                    max_memory=options.max_memory,
                    cancel=cancel,
                ),
            )
        )
    for phase in selected if "thickness" in what else ():
        steps.append(
            (
                "thickness",
                phase,
                iter_local_thickness(
                    labels,
                    phase,
                    phases=phases,
                    voxel_size=units,
                    max_memory=options.max_memory,
                    cancel=cancel,
                ),
            )
        )
    for phase in oriented:
        steps.append(
            (
                "orientation",
                phase,
                iter_fibre_orientation(
                    labels,
                    phase,
                    phases=phases,
                    image=image,
                    voxel_size=units,
                    fibre_radius=options.fibre_radius,
                    axis=options.axis,
                    cancel=cancel,
                ),
            )
        )
    if "surface" in what:
        steps.append(
            (
                "surface",
                None,
                iter_surface_areas(labels, phases=phases, voxel_size=units, cancel=cancel),
            )
        )
    first = [next(gen) for _, _, gen in steps]  # runs each measure's checks (see above)

    total = _UNITS_PER_STEP * max(1, len(steps))
    results: list[Any] = []
    for k, ((measure, of, gen), event) in enumerate(zip(steps, first, strict=True)):
        step = measure if of is None else f"{measure} of {of}"
        base = k * _UNITS_PER_STEP
        check_cancel(cancel, "measuring")
        yield MeasureProgress(step, base + int(_UNITS_PER_STEP * event.fraction), total)
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                results.append(stop.value)
                break
            yield MeasureProgress(step, base + int(_UNITS_PER_STEP * event.fraction), total)
    check_cancel(cancel, "measuring")

    out: dict[str, Any] = {"objects": {}, "thickness": {}, "orientation": {}}
    fractions = surfaces = None
    for (measure, of, _), result in zip(steps, results, strict=True):
        if measure == "fractions":
            fractions = result
        elif measure == "surface":
            surfaces = result
        else:
            out[measure][of] = result
    for res in (*out["objects"].values(), *out["thickness"].values(), *out["orientation"].values()):
        if res.note and res.note not in notes:
            notes.append(res.note)
    return Measurements(
        name=name,
        phases=phases,
        units=units,
        shape=shape,
        options=options,
        selected=tuple(selected),
        fractions=fractions,
        objects=out["objects"],
        thickness=out["thickness"],
        orientation=out["orientation"],
        surfaces=surfaces,
        notes=tuple(notes),
        image=image_name if image is not None else None,
        mask=mask_name if mask is not None else None,
    )


def measure_all(labels: Any, *, phases: PhaseTable, **options: Any) -> Measurements:
    """Run :func:`iter_measurements` to the end and return its result (same arguments)."""
    return run_to_completion(iter_measurements(labels, phases=phases, **options))


def _check_budget(shape: tuple[int, int, int], what: Sequence[str], max_memory: int) -> None:
    """Refuse at once the in-memory measures a volume is too big for (they would refuse later)."""
    n = int(np.prod(shape))
    need = {
        "objects": OBJECT_BYTES_PER_VOXEL * n,
        "thickness": THICKNESS_BYTES_PER_VOXEL * n,
    }
    over = [m for m in ("objects", "thickness") if m in what and need[m] > max_memory]
    if over:
        z, y, x = shape
        raise ValueError(
            f"{' and '.join(over)} of a {z}x{y}x{x} volume need about "
            f"{max(need[m] for m in over) / 2**30:.1f} GiB, over the budget of "
            f"{max_memory / 2**30:.1f} GiB; measure a crop of the volume, or leave "
            f"{' and '.join(over)} out ({', '.join(STREAMING_MEASURES)} stream with flat memory)"
        )


# --------------------------------------------------------------------------------------------


def csv_paths(measurements: Measurements, folder: str | Path, stem: str) -> dict[str, Path]:
    """The CSV file of each measure taken: ``<folder>/<stem>_<measure>.csv``."""
    folder = Path(folder).expanduser()
    return {m: _csv_path(folder, stem, m) for m in measurements.tables()}


def _csv_path(folder: Path, stem: str, measure: str) -> Path:
    return folder / f"{stem}_{measure}.csv"


def write_csvs(
    measurements: Measurements,
    folder: str | Path,
    *,
    stem: str,
    overwrite: bool = False,
) -> list[Path]:
    """Write one CSV per measure into ``folder`` (which must exist), each file atomically.

    Parameters
    ----------
    measurements : Measurements
    folder : path
        An existing folder.
    stem : str
        Start of each file name (e.g. the volume's name): ``<stem>_<measure>.csv``.
    overwrite : bool
        Replace existing files; without it nothing is written when any of them exists.

    Returns
    -------
    list of Path
        The files written.

    Raises
    ------
    FileNotFoundError, NotADirectoryError
        If ``folder`` is missing or is not a folder.
    FileExistsError
        If a file exists and ``overwrite`` is false (listing them); nothing is written.
    """
    from napari_tomoseg.core.io.write import atomic_output

    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(
            errno.ENOENT,
            "the folder for the CSV files does not exist; create it first",
            str(folder),
        )
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the CSV output is not a folder", str(folder))
    texts = measurements.csv_texts()
    paths = {m: _csv_path(folder, stem, m) for m in texts}  # the tables are built once
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            errno.EEXIST,
            f"{len(existing)} CSV file(s) exist already ({', '.join(p.name for p in existing)}); "
            "choose another folder or allow overwriting (--overwrite)",
            str(existing[0]),
        )
    written = []
    for measure, path in paths.items():
        with atomic_output(path, overwrite=overwrite, folder=False) as tmp:
            tmp.write_text(texts[measure], encoding="utf-8", newline="")
        written.append(path)
    return written
