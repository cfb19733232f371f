"""``tomoseg info FILE``: what a model file or a volume holds.

.safetensors -> core.model.load_model -> architecture, phases, normalisation, defaults, provenance;
any other file -> core.io.read_volume (lazy) -> shape, dtype, voxel size, a sample's grey range.
Printed as ``key: value`` lines or, with --json, one JSON object.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg._cli.common import json_text


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``info`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser("info", help="summary of a model or volume file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the summary of a model or a volume file."""
    path = Path(args.file).expanduser()
    info = model_info(path) if path.suffix.lower() == ".safetensors" else volume_info(path)
    if args.json:
        print(json_text(info))
    else:
        for k, v in info.items():
            print(f"{k:>22}: {v}")
    return 0


def model_info(path: Path) -> dict[str, Any]:
    """Architecture, parameter count, phases, normalisation, defaults and provenance of a model file."""
    from napari_tomoseg.core.model import count_parameters, load_model

    m = load_model(path)
    return {
        "kind": "model",
        "path": str(path),
        "architecture": asdict(m.config),
        "parameters": count_parameters(m.network),
        "phases": m.phases.to_json(),
        "normalization": asdict(m.normalization),
        "inference_defaults": asdict(m.defaults),
        "provenance": m.provenance,
    }


def volume_info(path: Path) -> dict[str, Any]:
    """Shape, dtype, voxel size and the grey range of a sample of a volume (and its phases, if any)."""
    from napari_tomoseg.core import io
    from napari_tomoseg.core.prep.intensity import subsample

    vol = io.read_volume(path, lazy=True)
    sample = subsample(vol, 1_000_000)
    info: dict[str, Any] = {
        "kind": "volume",
        "path": str(path),
        "shape": list(vol.shape),
        "dtype": str(vol.dtype),
        "megavoxels": float(np.prod(vol.shape)) / 1e6,
        "voxel_size": io.read_voxel_size(path),
        "sample_min": float(sample.min()),
        "sample_max": float(sample.max()),
        "sample_percentiles_0.5_99.5": [float(v) for v in np.percentile(sample, [0.5, 99.5])],
    }
    phases = io.read_label_phases(path)
    if phases is not None:
        info["phases"] = phases.to_json()
    return info
