"""Train the bundled default model on synthetic phantoms (seeded, reproducible).

    python scripts/train_bundled.py --minutes 44 -o stage1.safetensors
    python scripts/train_bundled.py --init stage1.safetensors --minutes 10 --default-fraction 1.0 \
        --phantoms 12 --lr 6e-4 --seed 1 -o src/napari_tomoseg/models/composite-2d.safetensors --overwrite

Stage 1 (from scratch), phantoms: half at the default composite settings, the rest from ``random_config`` (contrast,
blur, noise, rings, cupping, fibre size and orientation, pore size, 8/16 bit all varied widely) so that
the features transfer to users' volumes. Crops come from all three axes, so the model segments
slices along any axis. Stage 2 continues on default-setting phantoms only. Seeds: training phantoms use 1000+, validation 900; demo and tests use 0..99.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from napari_tomoseg import __version__
from napari_tomoseg.core.learn.train import AnnotatedVolume, CropSampler, TrainConfig, iter_train
from napari_tomoseg.core.measure.metrics import jaccard_per_phase
from napari_tomoseg.core.model import (
    InferenceDefaults,
    ModularUNet,
    TomosegModel,
    UNetConfig,
    inflate_to_slices,
    load_model,
    save_model,
)
from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom, random_config
from napari_tomoseg.core.phases import COMPOSITE_PHASES
from napari_tomoseg.core.prep.intensity import Normalization, apply_range
from napari_tomoseg.core.segment import InferenceConfig, Segmenter

log = logging.getLogger("train_bundled")


def make_training_set(
    n: int,
    seed: int,
    shape: tuple[int, int, int],
    default_fraction: float = 0.5,
    norm: Normalization | None = None,
) -> tuple[list[AnnotatedVolume], list[dict]]:
    rng = np.random.default_rng(seed)
    norm = norm or Normalization()
    volumes, configs = [], []
    for i in range(n):
        s = 1000 + seed * 100 + i
        default = (
            round(i * default_fraction, 6) % 1 < default_fraction
        )  # spread evenly; i = 0 is default
        cfg = replace(PhantomConfig(), shape=shape) if default else random_config(rng, shape=shape)
        ph = make_phantom(cfg, seed=s)
        image = norm.prepare(ph.volume)  # the network learns on what inference will show it
        lo, hi = norm.volume_range(image)
        volumes.append(AnnotatedVolume(apply_range(image[...], lo, hi), ph.labels))
        configs.append({"seed": s, **{k: v for k, v in asdict(cfg).items() if k != "shape"}})
        log.info("phantom %d/%d seed %d", i + 1, n, s)
    return volumes, configs


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-o", "--output", default="src/napari_tomoseg/models/composite-2d.safetensors")
    ap.add_argument("--minutes", type=float, default=40.0, help="training time budget")
    ap.add_argument("--steps", type=int, help="step budget (bitwise reproducible on CPU)")
    ap.add_argument("--base-filters", type=int, default=6)
    ap.add_argument("--phantoms", type=int, default=18)
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 192, 192])
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument(
        "--axes", default="zzzyx", help="slicing axes of training crops, repeated to weight them"
    )
    ap.add_argument(
        "--default-fraction", type=float, default=0.5, help="share of phantoms at default settings"
    )
    ap.add_argument(
        "--context-slices",
        type=int,
        default=1,
        help="neighbouring slices the network sees (1: 2D; odd k >= 3: 2.5D); a 2D --init model is "
        "extended to k slices",
    )
    ap.add_argument(
        "--no-ring-removal",
        dest="ring_removal",
        action="store_false",
        help="train and segment on the raw phantoms (by default their ring artifacts are "
        "subtracted first, in training as in inference)",
    )
    ap.add_argument("--init", help="continue from this model file instead of random weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    norm = Normalization(ring_removal=args.ring_removal)
    volumes, configs = make_training_set(
        args.phantoms, args.seed, tuple(args.shape), args.default_fraction, norm
    )
    val = make_phantom(replace(PhantomConfig(), shape=(64, 128, 128)), seed=900)
    log.info("made %d phantoms in %.0f s", len(volumes), time.perf_counter() - t0)

    k = args.context_slices
    cfg = UNetConfig(ndim=2, in_channels=k, n_phases=3, depth=3, base_filters=args.base_filters)
    net = ModularUNet(cfg)
    if args.init:
        init = load_model(args.init)
        init_net = init.network
        if init.config.in_channels == 1 and k > 1:
            init_net = inflate_to_slices(init_net, k, spread="centre")
        if init_net.cfg != cfg:
            raise SystemExit(f"--init model has architecture {init.config}, not {cfg}")
        net.load_state_dict(init_net.state_dict())
    defaults = InferenceDefaults(mode="2d" if k == 1 else "2.5d", axis="z", tile=512, overlap=32)
    axes = tuple("zyx".index(a) for a in args.axes)
    # Fully labelled phantoms: mild rare-phase oversampling and unweighted cross-entropy, which keep
    # the decision at phase boundaries unbiased (weights push boundary voxels to the rarer phase).
    sampler = CropSampler(
        volumes,
        n_phases=3,
        crop=args.crop,
        axes=axes,
        in_channels=k,
        rare_fraction=0.15,
        seed=args.seed,
    )

    def validate(network: torch.nn.Module) -> np.ndarray:
        model = TomosegModel(network, COMPOSITE_PHASES, norm, defaults)
        segmenter = Segmenter(model, InferenceConfig(device="cpu", precision="fp32"))
        res = segmenter.plan(val.volume).segment()
        return jaccard_per_phase(res.labels, val.labels, 3)

    tcfg = TrainConfig(
        crop=args.crop,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        steps=args.steps,
        budget=None if args.steps else args.minutes * 60,
        validate_every=200,
        rare_fraction=0.15,
        class_weight_power=0.0,
        axes=axes,
        seed=args.seed,
    )
    gen = iter_train(net, sampler, tcfg, validate=validate)
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if ev.step % 50 == 0 or ev.validation is not None:
            v = (
                ""
                if ev.validation is None
                else " val " + " ".join(f"{s:.3f}" for s in ev.validation)
            )
            log.info(
                "step %d loss %.4f lr %.2e %.0fs eta %.0fs%s",
                ev.step,
                ev.loss,
                ev.learning_rate,
                ev.elapsed,
                ev.eta,
                v,
            )
    provenance = {
        "trained_by": "scripts/train_bundled.py",
        "package_version": __version__,
        "base_model": args.init,
        "data": f"{args.phantoms} synthetic phantoms {tuple(args.shape)}",
        "phantom_configs": configs,
        "steps": result.steps,
        "best_step": result.best_step,
        "seconds": round(result.seconds, 1),
        "voxels_seen": result.voxels_seen,
        "seed": args.seed,
        "train_config": asdict(tcfg),
        "validation": {
            "phantom_seed": 900,
            "jaccard": dict(
                zip(COMPOSITE_PHASES.names, result.best_validation or (), strict=False)
            ),
        },
        "machine": f"{platform.machine()} {platform.processor()} torch {torch.__version__}",
    }
    model = TomosegModel(net, COMPOSITE_PHASES, norm, defaults, provenance)
    path = save_model(Path(args.output), model, overwrite=args.overwrite)
    log.info(
        "saved %s; best validation %s at step %d of %d",
        path,
        result.best_validation,
        result.best_step,
        result.steps,
    )
    print(
        json.dumps(
            {"output": str(path), "validation": result.best_validation, "steps": result.steps}
        )
    )


if __name__ == "__main__":
    main()
