"""``tomoseg segment VOLUME -o LABELS``: a volume into phase labels, block by block.

VOLUME (lazy) -> Segmenter(model, options).plan(volume) (options resolved and the volume prepared
once) -> plan.run into prediction_stores: LABELS (+ the uncertainty map) through temporary stores -> time, speed and phase fractions printed.
With --scheduler / --local-cluster the blocks run on dask workers (core.segment.distributed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Any

import numpy as np

from napari_tomoseg._cli.common import (
    CliError,
    add_inference_options,
    add_voxel_size_option,
    check_grey_volume,
    check_inference_options,
    check_number,
    check_outputs,
    inference_config,
    load_model,
    run_plan,
    set_threads,
    voxel_size_option,
)

log = logging.getLogger("napari_tomoseg")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``segment`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "segment",
        help="segment a volume into phases (streams block by block: volumes larger than memory)",
    )
    p.add_argument(
        "input",
        help="volume: .tif/.tiff stack, folder of TIFF slices, .npy, .zarr, .h5/.hdf5",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="label file to write (.zarr: a plain zarr v3 array; .tif or .npy)",
    )
    p.add_argument("--dataset", help="array inside a zarr group or HDF5 file holding several")
    p.add_argument(
        "--uncertainty",
        metavar="PATH",
        help="also write the normalised softmax entropy as uint8 0..255 (.zarr, .tif or .npy)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing dask.distributed cluster, e.g. tcp://host:8786 (input and "
        "output must be zarr on storage every worker sees)",
    )
    p.add_argument(
        "--local-cluster",
        type=int,
        metavar="N",
        help="run on a dask LocalCluster of N worker processes on this machine",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    add_voxel_size_option(p, "read from the volume's file; written into the label file")
    add_inference_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Segment ``args.input`` into ``args.output``; print the speed and the phase fractions."""
    from napari_tomoseg.core import io

    # Options and outputs first: a typo or an output that is the input fails before any work.
    check_inference_options(args)
    given_voxel_size = voxel_size_option(args.voxel_size)
    if args.local_cluster is not None:
        check_number(args.local_cluster, "--local-cluster", minimum=1)
    if args.scheduler is not None and args.local_cluster is not None:
        raise CliError("give either --scheduler or --local-cluster, not both")
    check_outputs([args.output, args.uncertainty], [args.input, args.model])
    out_path = io.check_output_path(args.output, overwrite=args.overwrite)
    unc_path = (
        io.check_output_path(args.uncertainty, overwrite=args.overwrite)
        if args.uncertainty
        else None
    )
    if unc_path is not None and unc_path.resolve() == out_path.resolve():
        raise CliError("-o and --uncertainty name the same file; give two different paths")
    config = inference_config(args)  # checks --memory and the other options early
    model = load_model(args.model)
    check_inference_options(args, model)
    volume = io.read_volume(args.input, dataset=args.dataset, lazy=True)
    check_grey_volume(volume, args.input)
    set_threads(args.threads)
    voxel_size = given_voxel_size or io.read_voxel_size(args.input, dataset=args.dataset)
    shape = tuple(int(s) for s in volume.shape)
    if args.scheduler is not None or args.local_cluster is not None:
        if unc_path is not None:
            raise CliError("--uncertainty is not available with --scheduler / --local-cluster yet")
        from napari_tomoseg.core.segment.distributed import segment_distributed

        done = segment_distributed(
            args.input,
            out_path,
            model,
            config,
            dataset=args.dataset,
            scheduler=args.scheduler,
            local_cluster=args.local_cluster,
            voxel_size=voxel_size,
            overwrite=args.overwrite,
        )
        counts = done.counts
        seconds, device, precision, mode = done.seconds, "dask", done.precision, done.mode
    else:
        from napari_tomoseg.core.segment import Segmenter, format_bytes, prediction_stores

        segmenter = Segmenter(model, config)
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(
                io.rechunked(volume, folder=out_path.parent, name=str(args.input))
            )
            plan = segmenter.plan(source, probabilities=unc_path is not None, name=str(args.input))
            if plan.settings.memory_estimate is not None and config.memory is not None:
                log.info(
                    "memory budget %s: %d slices per block, %d tiles per batch, expected peak %s",
                    format_bytes(config.memory),
                    plan.settings.block,
                    plan.settings.batch_size,
                    format_bytes(plan.settings.memory_estimate),
                )
            stores = stack.enter_context(
                prediction_stores(
                    out_path,
                    shape,
                    phases=model.phases,
                    chunks=plan.output_chunks,
                    uncertainty=unc_path,
                    voxel_size=voxel_size,
                    overwrite=args.overwrite,
                )
            )
            result = run_plan(plan, out=stores.out, probabilities_out=stores.probabilities_out)
        counts = stores.out.counts
        seconds, device, precision = result.seconds, result.device, result.precision
        mode = result.settings.mode + (", test-time augmentation" if result.settings.tta else "")
    fractions = counts[1:] / max(1, int(counts.sum()))
    n = int(np.prod(shape))
    extra = f" and {unc_path}" if unc_path is not None else ""
    print(
        f"segmented {args.input} {shape} in {seconds:.1f} s "
        f"({n / seconds / 1e6:.2f} Mvox/s, {device}, {precision}, mode {mode}) "
        f"-> {out_path}{extra}"
    )
    for name, f in zip(model.phases.names, fractions, strict=True):
        print(f"  {name:<10} {100 * f:6.2f} %")
    return 0
