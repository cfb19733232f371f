"""``tomoseg measure LABELS``: phase fractions, profiles, object sizes, local thickness, fibre orientation
and surfaces of a segmentation, in µm.

LABELS (read lazily) + --image, --mask, --voxel-size (or the files' own) + --what, --phase, --axis
-> checks (one-line errors, nothing written) -> core.measure.measurements.iter_measurements (progress bar)
-> a summary table, or one JSON object (--json); one CSV per measure (--csv DIR).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg._cli.common import (
    CliError,
    add_voxel_size_option,
    json_text,
    progress_bar,
    voxel_size_option,
)
from napari_tomoseg.core.phases import PhaseTable

#: Endings stripped from the labels' file name to name the CSV files.
_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr", ".h5", ".hdf5")
#: Without a phase table, more ids than this are taken for a grey image given by mistake.
_MAX_UNNAMED_PHASES = 32


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``measure`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "measure",
        help="phase fractions, profiles, sizes, thickness, fibre orientation and surfaces in µm",
        description=(
            "Measure a segmentation: volume fraction of each phase (whole and inside --mask), its "
            "profile along --axis, connected objects and their sizes, local thickness, fibre "
            "orientation tensor, surface and interface areas. By default every measure of every "
            "phase (orientation of the phase named 'fibre', else of the --phase phases). Lengths "
            "are in µm when the voxel size is known (--voxel-size, or the files' metadata), else "
            "in voxels."
        ),
    )
    p.add_argument("labels", help="label file (.tif, .npy, .zarr, .h5) with phase ids 1..C")
    p.add_argument(
        "--image",
        metavar="VOLUME",
        help="the grey volume the labels were made from: the fibre orientation is then computed "
        "on it (better for touching fibres)",
    )
    p.add_argument(
        "--phase",
        metavar="NAME",
        nargs="+",
        action="extend",
        help="phases to measure (objects, thickness) and, without a phase named 'fibre', "
        "whose orientation to measure (default: every phase)",
    )
    p.add_argument(
        "--axis", default="z", help="axis of the fraction profile: z, y or x (default z)"
    )
    p.add_argument("--slab", type=int, default=1, help="slices per bin of the profile (default 1)")
    p.add_argument(
        "--mask",
        metavar="M",
        help="a volume of the same shape, non-zero inside: adds fractions inside it and measures "
        "the profile inside it",
    )
    add_voxel_size_option(p, "read from the labels, then the image")
    p.add_argument(
        "--what",
        default="all",
        help="comma-separated measures: fractions, profile, objects, thickness, orientation, "
        "surface (default all)",
    )
    p.add_argument(
        "--connectivity",
        type=int,
        default=26,
        help="6: voxels sharing a face form one object; 26 (default): also an edge or corner",
    )
    p.add_argument(
        "--fibre-radius",
        type=float,
        help="fibre radius in µm (in voxels without a voxel size); sets the structure tensor's "
        "integration scale (default 4 voxels)",
    )
    p.add_argument("--csv", metavar="DIR", help="write one CSV per measure into this folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing CSV files")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def run(args: argparse.Namespace) -> int:
    """Measure; print a summary table or JSON; write the CSV files."""
    from napari_tomoseg.core import io
    from napari_tomoseg.core.measure.measurements import (
        MeasureOptions,
        iter_measurements,
        parse_what,
        write_csvs,
    )
    from napari_tomoseg.core.measure.units import AXES
    from napari_tomoseg.core.progress import run_to_completion

    # Options first: a typo fails before any file is opened.
    try:
        what = parse_what(args.what)
    except ValueError as err:
        raise CliError(f"--what: {err}") from None
    axis = str(args.axis).strip().lower()
    if axis not in AXES:
        raise CliError(f"--axis must be z, y or x, got {args.axis!r}")
    if args.slab < 1:
        raise CliError(f"--slab must be a whole number of slices >= 1, got {args.slab}")
    if args.connectivity not in (6, 26):
        raise CliError(f"--connectivity must be 6 or 26, got {args.connectivity}")
    if args.fibre_radius is not None and not (
        np.isfinite(args.fibre_radius) and args.fibre_radius > 0
    ):
        raise CliError(f"--fibre-radius must be a positive length, got {args.fibre_radius}")
    names = [part.strip() for given in args.phase or [] for part in given.split(",")]
    if any(not n for n in names):
        raise CliError("--phase got an empty name; give phase names, e.g. --phase fibre pore")
    voxel_size = voxel_size_option(args.voxel_size)

    labels_path = Path(args.labels).expanduser()
    labels = io.open_volume(labels_path)
    shape = tuple(int(s) for s in labels.shape)
    if len(shape) != 3:
        raise CliError(f"{labels_path}: expected 3D labels (z, y, x), got shape {shape}")
    dtype = np.dtype(labels.dtype)
    if not (np.issubdtype(dtype, np.integer) or dtype == np.bool_):
        raise CliError(
            f"{labels_path} holds {dtype} values, not integer phase ids; give a label volume "
            "(e.g. from tomoseg segment), or pass the grey volume with --image"
        )
    phases = io.read_label_phases(labels_path) or _numbered_phases(labels, labels_path)
    for n in names:
        try:
            phases.id_of(n)
        except ValueError:
            raise CliError(
                f"--phase {n!r}: the labels have no such phase; they have {', '.join(phases.names)}"
            ) from None
    image = (
        _same_shape(io.read_volume(args.image, lazy=True), args.image, shape, "image")
        if args.image
        else None
    )
    mask = None
    if args.mask:
        mask = _same_shape(io.open_volume(args.mask), args.mask, shape, "mask")
        if np.dtype(mask.dtype).kind not in "biu":
            raise CliError(
                f"the mask {args.mask} holds {mask.dtype} values; give a mask of 0 (outside) and "
                "non-zero (inside) integers"
            )
    if voxel_size is None:
        voxel_size = io.read_voxel_size(labels_path) or (
            io.read_voxel_size(args.image) if args.image else None
        )
    options = MeasureOptions(
        what=what,
        phases=tuple(names),
        orientation=None,
        axis=axis,
        slab=args.slab,
        connectivity=args.connectivity,
        fibre_radius=args.fibre_radius,
    )

    folder = stem = None
    if args.csv:
        folder, stem = _csv_folder(args.csv, labels_path, [args.image, args.mask])

    gen = iter_measurements(
        labels,
        phases=phases,
        options=options,
        image=image,
        mask=mask,
        voxel_size=voxel_size,
        name=str(args.labels),
        image_name=str(args.image) if args.image else None,
        mask_name=str(args.mask) if args.mask else None,
    )
    if folder is not None and stem is not None and not args.overwrite:
        # Checked before the work (and again when writing): one file per measure asked for.
        planned = [folder / f"{stem}_{m}.csv" for m in what]
        existing = [p for p in planned if p.exists()]
        if existing:
            raise CliError(
                f"{existing[0]} exists; pass --overwrite to replace the CSV files or choose "
                "another --csv folder"
            )
    bar = progress_bar(1, "measure", unit="", unit_scale=False)
    last = [0]

    def update(event: Any) -> None:
        if bar.total != event.total:
            bar.total = event.total
        bar.set_description(f"measure: {event.step}", refresh=False)
        bar.update(event.done - last[0])
        last[0] = event.done

    try:
        result = run_to_completion(gen, update)
    except ValueError as err:
        if str(err).startswith("the labels hold ids"):
            # the core asks for "the phase table the labels were made with", which the CLI reads
            # from the file itself: say which file disagrees with itself
            raise CliError(
                f"{labels_path}: {err}".replace(
                    "give the phase table the labels were made with",
                    "fix the labels or their phase table first",
                )
            ) from None
        raise
    finally:
        bar.close()

    written: list[Path] = []
    if folder is not None and stem is not None:
        folder.mkdir(exist_ok=True)  # its parent was checked to exist
        written = write_csvs(result, folder, stem=stem, overwrite=args.overwrite)
    if args.json:
        print(json_text(result.to_dict()))
    else:
        print(result.summary_text())
        if written:
            print(
                f"\nwrote {len(written)} CSV file(s) to {folder}: {', '.join(p.name for p in written)}"
            )
    return 0


def _same_shape(arr: Any, path: str, shape: tuple[int, ...], what: str) -> Any:
    if tuple(arr.shape) != shape:
        raise CliError(
            f"the {what} {path} {tuple(arr.shape)} and the labels {shape} differ in shape; give "
            f"the {what} of the volume that was segmented"
        )
    return arr


def _numbered_phases(labels: Any, path: Any) -> PhaseTable:
    """``phase 1`` ... ``phase N`` for a label file without a phase table (N: its largest id)."""
    top = 0
    step = max(1, (1 << 24) // max(1, int(np.prod(labels.shape[1:]))))
    for a in range(0, int(labels.shape[0]), step):
        slab = np.asarray(labels[a : a + step])
        if slab.size:
            if int(slab.min()) < 0:
                raise CliError(
                    f"{path} holds negative ids ({int(slab.min())}); phase ids are 1..C, 0 for none"
                )
            top = max(top, int(slab.max()))
    if top == 0:
        raise CliError("the labels hold no phase (every voxel is 0); give a segmentation")
    if top > _MAX_UNNAMED_PHASES:
        raise CliError(
            f"the labels hold ids up to {top} and no phase table: that is a grey image, not a "
            "segmentation; give a label volume (e.g. from tomoseg segment) and the grey volume "
            "with --image"
        )
    return PhaseTable.from_names([f"phase {i}" for i in range(1, top + 1)])


def _csv_folder(text: str, labels: Path, others: list[str | None]) -> tuple[Path, str]:
    """The CSV folder (checked, not created yet) and the files' name stem."""
    folder = Path(text).expanduser()
    if folder.exists() and not folder.is_dir():
        raise CliError(f"--csv {folder} is a file; give a folder for the CSV files")
    if not folder.exists() and not folder.parent.is_dir():
        raise CliError(
            f"--csv {folder}: its parent folder does not exist; create it first or choose another"
        )
    resolved = folder.resolve()
    for p in (labels, *(Path(o).expanduser() for o in others if o)):
        src = p.resolve()
        if resolved == src or src in resolved.parents:
            raise CliError(
                f"--csv {folder} is inside the input {p}; choose a folder outside the inputs"
            )
    name = labels.name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._") or "labels"
    return folder, stem
