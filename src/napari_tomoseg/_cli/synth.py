"""``tomoseg synth``: a synthetic glass-fibre composite volume and its ground truth.

options -> core.phantom.composite.PhantomConfig -> make_phantom(seed) -> volume file + label file
(phase names inside) -> the phase fractions, printed.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from napari_tomoseg._cli.common import CliError
from napari_tomoseg.core.phases import COMPOSITE_PHASES

#: Phantom options that take a float, with their help text (None: the phantom's default).
_PHANTOM_OPTIONS = (
    ("contrast", "fibre minus matrix intensity (matrix = 1)"),
    ("noise", "noise standard deviation"),
    ("fibre-radius", "mean fibre radius in voxels"),
    ("ring-strength", "ring artifact amplitude"),
    ("blur", "point-spread function sigma in voxels"),
    ("cupping", "beam-hardening cupping amplitude"),
    ("fibre-fraction", "target fibre volume fraction"),
    ("pore-fraction", "target pore volume fraction"),
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``synth`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "synth", help="write a synthetic glass-fibre composite volume and its ground truth"
    )
    p.add_argument("-o", "--output", required=True, help="volume file (.tif, .npy, .zarr)")
    p.add_argument("--labels", required=True, help="ground-truth label file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--dtype", choices=["uint8", "uint16"], default="uint8")
    for name, text in _PHANTOM_OPTIONS:
        p.add_argument(f"--{name}", type=float, help=text)
    p.add_argument("--overwrite", action="store_true")
    return p


def phantom_config(args: argparse.Namespace) -> Any:
    """The :class:`~napari_tomoseg.core.phantom.composite.PhantomConfig` the options ask for."""
    from napari_tomoseg.core.phantom.composite import PhantomConfig

    cfg = PhantomConfig(shape=tuple(args.shape), dtype=args.dtype)
    changes = {
        key: getattr(args, key)
        for key in (name.replace("-", "_") for name, _ in _PHANTOM_OPTIONS)
        if getattr(args, key) is not None
    }
    return replace(cfg, **changes)


def run(args: argparse.Namespace) -> int:
    """Write the phantom and its labels; print the phase fractions."""
    from napari_tomoseg.core import io
    from napari_tomoseg.core.measure.metrics import phase_fractions
    from napari_tomoseg.core.phantom.composite import make_phantom

    vol_path = io.check_output_path(args.output, overwrite=args.overwrite)
    lab_path = io.check_output_path(args.labels, overwrite=args.overwrite)
    if vol_path.resolve() == lab_path.resolve():
        raise CliError("-o and --labels name the same file; give two different paths")
    ph = make_phantom(phantom_config(args), seed=args.seed)
    io.write_volume(vol_path, ph.volume, overwrite=args.overwrite)
    io.write_labels(lab_path, ph.labels, phases=COMPOSITE_PHASES, overwrite=args.overwrite)
    fr = phase_fractions(ph.labels, 3)
    print(
        f"wrote {vol_path} ({ph.volume.dtype}, {ph.volume.shape}) and {lab_path}; "
        + ", ".join(f"{n} {100 * f:.2f} %" for n, f in zip(COMPOSITE_PHASES.names, fr, strict=True))
    )
    return 0
