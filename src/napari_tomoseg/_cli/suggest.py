"""``tomoseg suggest``: the slices to annotate next, where the model is least sure.

volume + model -> per-voxel uncertainty (entropy; axis disagreement in 2d-3axes mode)
-> mean per slice -> n slices picked by uncertainty x coverage (far from the --annotations, from each
other and from the volume's ends), printed in the order picked with their mean uncertainty.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from napari_tomoseg._cli.common import (
    CliError,
    check_grey_volume,
    check_number,
    check_outputs,
    json_text,
    load_model,
    progress_bar,
    set_threads,
)
from napari_tomoseg.core.model.modes import AXES, MODES


def run(args: argparse.Namespace) -> int:
    """Predict, rank the slices by uncertainty and coverage and print the ones to annotate next."""
    from napari_tomoseg.core import io
    from napari_tomoseg.core.measure.uncertainty import suggest_slices

    if args.n < 1:
        raise CliError(f"-n must be >= 1, got {args.n}")
    check_number(args.threads, "--threads", minimum=1)
    check_outputs([args.uncertainty], [args.input, args.annotations, args.model])
    if args.uncertainty:
        uncertainty_path = io.check_output_path(args.uncertainty, overwrite=args.overwrite)
    model = load_model(args.model)
    volume = io.read_volume(args.input, lazy=True)
    io.check_volume(volume, name=str(args.input))
    check_grey_volume(volume, args.input)
    volume = io.finite_checked(volume, str(args.input))
    annotations = None
    if args.annotations:
        annotations = io.read_labels(args.annotations)
        if annotations.shape != tuple(volume.shape):
            raise CliError(
                f"annotations {args.annotations} have shape {annotations.shape} but the volume is "
                f"{tuple(volume.shape)}; they must match voxel for voxel"
            )
    set_threads(args.threads)
    axis = AXES[args.axis]
    passes = 3 if (args.mode or model.defaults.mode) == "2d-3axes" else 1
    bar = progress_bar(passes * int(np.prod(volume.shape)), "predict")
    done = [0, 0]

    def update(event: Any) -> None:
        if event.done < done[1]:  # a new pass along another axis
            done[0] += done[1]
        done[1] = event.done
        bar.n = done[0] + event.done
        bar.refresh()

    try:
        ranked, u = suggest_slices(
            volume,
            model,
            axis=axis,
            n=args.n,
            annotations=annotations,
            mode=args.mode,
            device=args.device,
            progress=update,
        )
    finally:
        bar.close()
    if args.uncertainty:
        io.write_volume(
            uncertainty_path, np.round(u * 255).astype(np.uint8), overwrite=args.overwrite
        )
    if args.json:
        print(
            json_text(
                {
                    "axis": args.axis,
                    "slices": [{"index": s.index, "score": s.score} for s in ranked],
                }
            )
        )
    else:
        print(
            f"slices along {args.axis} to annotate next (mean uncertainty, 0 = sure, 1 = guessing; "
            "coverage, 0 = next to an annotated slice, 1 = far from all):"
        )
        for s in ranked:
            print(f"  {args.axis}={s.index:<6d} {s.score:.4f}  coverage {s.coverage:.2f}")
        if args.uncertainty:
            print(f"uncertainty map (uint8, 255 = most uncertain) -> {uncertainty_path}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``suggest`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "suggest",
        help="rank slices by the model's uncertainty: which to annotate next",
        description="Predict the volume, compute per-voxel uncertainty and print the slices to "
        "annotate next: uncertain slices far from those --annotations already covers, from each other "
        "and from the volume's ends (see napari_tomoseg.core.measure.uncertainty.rank_scores).",
    )
    p.add_argument("input", help="volume file or folder")
    p.add_argument("--model", help="model file (.safetensors); the bundled model if absent")
    p.add_argument("-n", type=int, default=3, help="how many slices to suggest")
    p.add_argument("--axis", choices=list(AXES), default="z")
    p.add_argument(
        "--annotations",
        help="existing annotations: their slices are not suggested, their neighbours weighed down",
    )
    p.add_argument("--mode", choices=list(MODES), help="default: the model's")
    p.add_argument("--uncertainty", help="also write the uncertainty map (uint8) to this file")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    return p
