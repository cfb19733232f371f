"""``tomoseg demo``: a phantom never used in training, segmented with the bundled model, scored.

make_phantom(seed) -> segment with the model -> per-phase Jaccard of the U-Net and of the
grey-level baseline against the phantom's ground truth -> a table + volume, truth and prediction files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg._cli.common import (
    CliError,
    add_inference_options,
    check_inference_options,
    format_table,
    inference_config,
    load_model,
    run_plan,
    set_threads,
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "demo", help="make a phantom, segment it with the bundled model, print per-phase Jaccard"
    )
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument(
        "--seed", type=int, default=0, help="phantom seed (0..99 are never used in training)"
    )
    p.add_argument("--output", help="folder for the files (default: a new ./tomoseg-demo folder)")
    add_inference_options(p)
    return p


def fresh_folder(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... : the first that does not exist yet."""
    candidate, i = base, 1
    while candidate.exists():
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def run(args: argparse.Namespace) -> int:
    """Make, segment and score the phantom; write the three files; print the table."""
    from napari_tomoseg.core import io
    from napari_tomoseg.core.measure.baseline import grey_level_baseline
    from napari_tomoseg.core.measure.metrics import jaccard_per_phase
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom
    from napari_tomoseg.core.segment import Segmenter

    check_inference_options(args)
    set_threads(args.threads)
    folder = Path(args.output) if args.output else fresh_folder(Path("tomoseg-demo"))
    if folder.exists() and any(folder.iterdir()):
        raise CliError(f"{folder} is not empty; choose another --output folder")
    if not folder.parent.is_dir():
        raise CliError(f"folder {folder.parent} does not exist; create it first")
    t0 = time.perf_counter()
    ph = make_phantom(PhantomConfig(shape=tuple(args.shape)), seed=args.seed)
    t_synth = time.perf_counter() - t0
    model = load_model(args.model)
    check_inference_options(args, model)
    result = run_plan(Segmenter(model, inference_config(args)).plan(ph.volume))
    n = len(model.phases)
    unet = jaccard_per_phase(result.labels, ph.labels, n)
    grey = jaccard_per_phase(grey_level_baseline(ph.volume, ph.labels, n), ph.labels, n)
    folder.mkdir()
    io.write_volume(folder / "volume.tif", ph.volume)
    io.write_labels(folder / "truth.tif", ph.labels, phases=model.phases)
    io.write_labels(folder / "prediction.tif", result.labels, phases=model.phases)
    voxels = int(np.prod(ph.volume.shape))
    print(
        f"phantom {ph.volume.shape} {ph.volume.dtype} (seed {args.seed}, never used in training) made in {t_synth:.1f} s; "
        f"segmented with {model.source.name if model.source else 'model'} in {result.seconds:.1f} s "
        f"({voxels / result.seconds / 1e6:.2f} Mvox/s on {result.device}, {result.precision})"
    )
    print("per-phase Jaccard against the phantom's ground truth:")
    print(format_table(model.phases.names, {"U-Net": unet, "grey-level": grey}))
    print(f"wrote {folder}/volume.tif, truth.tif, prediction.tif")
    return 0
