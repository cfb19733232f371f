"""``tomoseg clean``: move large, elongated blobs of a phase (ring artifacts, streaks) to another phase.

LABELS -> core.measure.blobs.find_blobs (slice by slice) -> select by area / aspect ratio
-> reassign_blobs -> OUT (same phase table and voxel size).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg._cli.common import CliError, check_number, check_outputs
from napari_tomoseg.core.model.modes import AXES
from napari_tomoseg.core.phases import PhaseTable


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``clean`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "clean",
        help="reassign large, elongated blobs of a phase (ring artifacts) to another phase",
        description=(
            "Find the connected blobs of PHASE in every slice, select those with at least "
            "--min-area pixels and an aspect ratio (major / minor axis) of at least --min-aspect, "
            "and give them the phase --to (default: the phase around each blob)."
        ),
    )
    p.add_argument("labels", help="label file (.tif, .npy, .zarr) with phase ids 1..C")
    p.add_argument("-o", "--output", required=True, help="cleaned label file to write")
    p.add_argument("--phase", required=True, help="phase whose blobs to clean, by name or id")
    p.add_argument(
        "--min-area", type=float, default=0, help="smallest blob area in pixels (default 0)"
    )
    p.add_argument(
        "--min-aspect", type=float, default=1.0, help="smallest aspect ratio, >= 1 (default 1)"
    )
    p.add_argument("--max-area", type=float, help="largest blob area in pixels")
    p.add_argument("--max-aspect", type=float, help="largest aspect ratio")
    p.add_argument(
        "--to", help="new phase, by name or id (default: the most frequent phase around each blob)"
    )
    p.add_argument("--axis", choices=list(AXES), default="z", help="slicing axis (default z)")
    p.add_argument(
        "--connectivity",
        type=int,
        choices=[1, 2],
        default=2,
        help="1: pixels touching by an edge, 2: also by a corner (default)",
    )
    p.add_argument("--blobs-csv", help="also write every blob (slice, area, aspect, selected) here")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def phase_id(text: str, table: PhaseTable | None, option: str) -> int:
    """The phase id ``text`` names (an id, or a name in ``table``); CliError naming ``option``."""
    if text.strip().isdigit():
        pid = int(text)
        if table is not None and pid not in table.ids:
            raise CliError(
                f"{option} {pid}: the label file's phases are "
                + ", ".join(f"{p.id}={p.name}" for p in table.phases)
            )
        if not 1 <= pid <= 255:
            raise CliError(f"{option} must be a phase id in 1..255, got {pid}")
        return pid
    if table is None:
        raise CliError(
            f"{option} {text!r}: the label file stores no phase names; give the phase id instead"
        )
    try:
        return table.id_of(text)
    except ValueError as err:
        raise CliError(f"{option}: {err}") from err


def run(args: argparse.Namespace) -> int:
    """Clean the label file; print how many blobs were found, selected and reassigned."""
    from napari_tomoseg.core import io
    from napari_tomoseg.core.measure.blobs import find_blobs, reassign_blobs

    check_number(args.min_area, "--min-area", minimum=0)
    check_number(args.min_aspect, "--min-aspect")  # finite; at least 1 is checked by the core
    check_number(args.max_area, "--max-area", above=0)
    check_number(args.max_aspect, "--max-aspect", minimum=1)
    if args.max_area is not None and args.max_area < args.min_area:
        raise CliError(
            f"--max-area {args.max_area:g} is below --min-area {args.min_area:g}: no blob can be "
            "selected"
        )
    if args.max_aspect is not None and args.max_aspect < args.min_aspect:
        raise CliError(
            f"--max-aspect {args.max_aspect:g} is below --min-aspect {args.min_aspect:g}: no blob "
            "can be selected"
        )
    src = Path(args.labels).expanduser()
    check_outputs([args.output, args.blobs_csv], [src])
    out_path = io.check_output_path(args.output, overwrite=args.overwrite)
    if src.exists() and out_path.exists() and src.resolve() == out_path.resolve():
        raise CliError("the output is the input file; write the cleaned labels to another file")
    csv_path = None
    if args.blobs_csv:
        csv_path = Path(args.blobs_csv).expanduser()
        if csv_path.exists() and not args.overwrite:
            raise CliError(f"{csv_path} exists; pass --overwrite to replace it")
        if not csv_path.parent.is_dir():
            raise CliError(f"folder {csv_path.parent} does not exist; create it first")
        io.check_writable_folder(csv_path.parent)
    labels = io.read_labels(src)
    if labels.dtype.kind == "i" and labels.size and int(labels.min()) < 0:
        raise CliError(
            f"{src} holds negative ids (e.g. {int(labels.min())}); label files hold 0 (none) and "
            "phase ids 1..C: remap them first"
        )
    table = io.read_label_phases(src)
    voxel_size = io.read_voxel_size(src)
    phase = phase_id(args.phase, table, "--phase")
    to = None if args.to is None else phase_id(args.to, table, "--to")
    if to == phase:
        raise CliError("--to names the same phase as --phase; choose another phase")

    blobs = find_blobs(labels, phase, axis=AXES[args.axis], connectivity=args.connectivity)
    selected = blobs.select(
        min_area=args.min_area,
        min_aspect=args.min_aspect,
        max_area=args.max_area,
        max_aspect=args.max_aspect,
    )
    cleaned = reassign_blobs(labels, blobs, selected, to)
    io.write_labels(
        out_path, cleaned, phases=table, voxel_size=voxel_size, overwrite=args.overwrite
    )
    if csv_path is not None:
        _write_csv(csv_path, blobs.rows(), selected)
    name = table.phases[phase - 1].name if table is not None else f"phase {phase}"
    changed = int(np.count_nonzero(cleaned != labels))
    print(
        f"{_n(len(blobs), 'blob')} of {name} in {_n(blobs.shape[blobs.axis], 'slice')}; "
        f"{int(selected.sum())} selected ({_n(int(blobs.area[selected].sum()), 'voxel')}), "
        f"{_n(changed, 'voxel')} reassigned -> {out_path}"
    )
    return 0


def _write_csv(path: Path, rows: list[dict[str, float | int]], selected: Any) -> None:
    from napari_tomoseg.core.io import temp_path

    tmp = temp_path(path, "partial")
    fields = ["slice", "blob", "area", "aspect_ratio", "major_axis", "minor_axis"]
    fields += ["centroid_row", "centroid_col", "selected"]
    try:
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            for row, sel in zip(rows, selected, strict=True):
                w.writerow({**row, "selected": int(bool(sel))})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _n(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless the count is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
