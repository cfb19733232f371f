"""Segment a volume with a model and save a PNG of three orthogonal slices with the labels overlaid.

    python scripts/overlay_figure.py fibers_150x150x150.tif -o docs/images/real-fibres.png

Used for the documentation's picture of a real CT volume (the 150³ glass-fibre scan shipped in
the ``qim3d`` wheel on PyPI; we do not redistribute it).
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from napari_tomoseg.core import io
from napari_tomoseg.core.measure.metrics import phase_fractions
from napari_tomoseg.core.model import bundled_model_path, load_model
from napari_tomoseg.core.segment import InferenceConfig, segment_volume


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)], np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("volume")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--mode", default=None)
    ap.add_argument("--alpha", type=float, default=0.45)
    args = ap.parse_args()
    volume = np.asarray(io.read_volume(args.volume))
    model = load_model(args.model or bundled_model_path())
    labels = segment_volume(volume, model, InferenceConfig(mode=args.mode)).labels
    lut = np.stack([np.zeros(3, np.float32), *(_rgb(p.colour) for p in model.phases.phases)])
    lo, hi = np.percentile(volume, [0.5, 99.5])
    grey = np.clip((volume.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255
    rows = []
    for axis in range(3):
        idx = volume.shape[axis] // 2
        g = np.take(grey, idx, axis)[..., None].repeat(3, -1)
        lab = np.take(labels, idx, axis)
        over = np.where(lab[..., None] > 0, (1 - args.alpha) * g + args.alpha * lut[lab], g)
        rows.append(np.concatenate([g, over], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    img = Image.fromarray(np.concatenate(rows).astype(np.uint8))
    img = img.resize((img.width * 2, img.height * 2), Image.NEAREST)
    img.save(args.output)
    fr = phase_fractions(labels, len(model.phases))
    print(", ".join(f"{n} {100 * f:.1f} %" for n, f in zip(model.phases.names, fr, strict=True)))


if __name__ == "__main__":
    main()
