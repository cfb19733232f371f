"""Fine-tuning benchmark: a few annotated slices of a shifted domain, a fixed CPU budget.

For each phantom seed (never used in training): make a shifted-domain phantom (fibre radius x1.5,
fibre-matrix contrast /2, noise x2, rings x2), annotate k whole z slices from the ground truth, then score
on every other slice: the bundled model before fine-tuning, after ``--budget`` seconds of fine-tuning,
the grey-level baseline and an ilastik-like random forest on multi-scale filter features, both fitted on
the same slices (the forest also on the ring-corrected volume, ``rf_rings_mean``). ``--suggest`` also fine-tunes on the k slices ranked most uncertain by the bundled model. ``--strokes`` also
fine-tunes on thin strokes through each phase of the same k slices (``core.phantom.stroke_annotations``,
about 10 % of their voxels) and compares with the whole slices: ``strokes_over_whole``.

    python benchmarks/finetune.py --slices 3 --budget 120        # last line: one JSON object
    python benchmarks/finetune.py --strokes --no-rf              # strokes against whole slices

Training throughput is reported in voxels/s and as a fraction of the matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

# This folder holds a ``dask.py`` benchmark: keep it from shadowing the real dask package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from _common import matmul_peak  # noqa: E402

from napari_tomoseg.core.learn.finetune import FinetuneConfig, finetune  # noqa: E402
from napari_tomoseg.core.measure.baseline import GreyLevelClassifier  # noqa: E402
from napari_tomoseg.core.measure.metrics import ConfusionAccumulator  # noqa: E402
from napari_tomoseg.core.measure.uncertainty import entropy, rank_slices  # noqa: E402
from napari_tomoseg.core.model import bundled_model_path, load_model  # noqa: E402
from napari_tomoseg.core.phantom import stroke_annotations  # noqa: E402
from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom  # noqa: E402
from napari_tomoseg.core.prep.rings import remove_rings  # noqa: E402
from napari_tomoseg.core.segment import InferenceConfig, segment_volume  # noqa: E402

log = logging.getLogger("benchmarks.finetune")
SEEDS = (500, 501, 502)  # bundled-model training used seeds 1000+


def shifted_domain(shape: tuple[int, int, int]) -> PhantomConfig:
    """The benchmark's fixed domain shift from the default phantom."""
    d = PhantomConfig()
    return replace(
        d,
        shape=shape,
        fibre_radius=1.5 * d.fibre_radius,
        contrast=0.5 * d.contrast,
        noise=2.0 * d.noise,
        ring_strength=2.0 * d.ring_strength,
    )


def evenly_spaced(n_slices: int, k: int) -> list[int]:
    return [round(v) for v in np.linspace(0, n_slices - 1, k + 2)[1:-1]]


def score(pred: np.ndarray, truth: np.ndarray, keep: np.ndarray, n: int) -> dict[str, Any]:
    acc = ConfusionAccumulator(n)
    acc.update(pred[keep], truth[keep])
    j = acc.jaccard()
    return {"mean": float(np.nanmean(j)), "per_phase": j}


def training_flops_per_voxel(model: Any, crop: int) -> float:
    """Forward + backward FLOPs per output voxel of one training crop (torch's flop counter)."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(model.network).train()  # a train-mode pass updates the norms' statistics
    x = torch.randn(1, model.config.in_channels, crop, crop)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / crop**2


def random_forest(
    volume: np.ndarray, labels: np.ndarray, seed: int, top: float | None = None
) -> np.ndarray:
    """ilastik-like pixel classifier: multi-scale intensity/edge/texture features + a random forest.

    ``top``: the grey value scaled to 1 (default: the largest value of the volume's integer dtype).
    """
    from functools import partial

    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    features = partial(
        multiscale_basic_features,
        intensity=True,
        edges=True,
        texture=True,
        sigma_min=0.7,
        sigma_max=8,
        num_sigma=5,
        channel_axis=None,
    )
    img = volume.astype(np.float32) / float(top or np.iinfo(volume.dtype).max)
    feats = features(img)  # (z, y, x, F), 3D filters as ilastik computes them on volumes
    annotated = labels > 0
    x, y = feats[annotated], labels[annotated]
    rng = np.random.default_rng(seed)
    if y.size > 60_000:
        pick = rng.choice(y.size, 60_000, replace=False)
        x, y = x[pick], y[pick]
    rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed, max_depth=20)
    rf.fit(x, y)
    flat = feats.reshape(-1, feats.shape[-1])
    out = np.concatenate(
        [rf.predict(flat[i : i + 1_000_000]) for i in range(0, flat.shape[0], 1_000_000)]
    )
    return out.reshape(labels.shape).astype(np.uint8)


def run_seed(seed: int, args: argparse.Namespace, base: Any) -> dict[str, Any]:
    ph = make_phantom(shifted_domain(tuple(args.shape)), seed=seed)
    vol, truth = ph.volume, ph.labels
    n = len(base.phases)
    nz = vol.shape[0]
    infer = InferenceConfig(axis="z")  # the base model's own mode
    probs = np.zeros((n, *vol.shape), np.float32)
    before_pred = segment_volume(vol, base, infer, probabilities_out=probs).labels
    strategies = {"even": evenly_spaced(nz, args.slices)}
    if args.suggest:
        strategies["suggested"] = [
            s.index for s in rank_slices(entropy(probs), axis=0, n=args.slices)
        ]
    if args.strokes:
        strategies["strokes"] = strategies["even"]
    out: dict[str, Any] = {"seed": seed}
    for name, chosen in strategies.items():
        keep = np.ones(vol.shape, bool)
        keep[chosen] = False
        annotations = np.zeros_like(truth)
        if name == "strokes":
            for z in chosen:  # strokes differ per slice and per phantom, the same in every run
                annotations[z] = stroke_annotations(
                    truth[z], fraction=args.stroke_fraction, seed=seed * 1000 + z
                )
        else:
            annotations[chosen] = truth[chosen]
        t0 = time.perf_counter()
        result = finetune(
            vol,
            annotations,
            base=base,
            config=FinetuneConfig(
                budget=args.budget,
                steps=args.steps,
                seed=args.seed,
                mode=args.mode,
                context_slices=args.context_slices,
            ),
        )
        train_seconds = time.perf_counter() - t0
        after_pred = segment_volume(vol, result.model, InferenceConfig(axis="z")).labels
        grey = GreyLevelClassifier(n).fit(vol, annotations).predict(vol)
        entry: dict[str, Any] = {
            "slices": chosen,
            "before": score(before_pred, truth, keep, n),
            "after": score(after_pred, truth, keep, n),
            "bin": score(grey, truth, keep, n),
            "train_seconds": train_seconds,
            "optimisation_seconds": result.seconds,
            "steps": result.steps,
            "voxels_seen": result.voxels_seen,
            "validation": result.validation,
            "annotated_voxels": int((annotations > 0).sum()),
            # the network trained (a 2D base extended to 2.5D sees 5 slices)
            "flops_per_voxel": training_flops_per_voxel(result.model, 128),
        }
        if name == "even" and not args.no_rf:
            t_rf = time.perf_counter()
            entry["rf"] = score(random_forest(vol, annotations, seed), truth, keep, n)
            entry["rf_seconds"] = time.perf_counter() - t_rf
            # The same forest on the ring-corrected volume that the U-Net sees (ilastik has no
            # ring removal, but a user could run ours before it): the fairer comparison.
            corrected = np.asarray(remove_rings(vol))
            top = float(np.iinfo(vol.dtype).max)
            rf_rings = random_forest(corrected, annotations, seed, top=top)
            entry["rf_rings"] = score(rf_rings, truth, keep, n)
        out[name] = entry
        log.info(
            "seed %d %s slices %s: before %.3f after %.3f bin %.3f rf %s (%d steps)",
            seed,
            name,
            chosen,
            entry["before"]["mean"],
            entry["after"]["mean"],
            entry["bin"]["mean"],
            f"{entry['rf']['mean']:.3f}" if "rf" in entry else "-",
            result.steps,
        )
    return out


def summarise(
    runs: list[dict[str, Any]], key: str, names: tuple[str, ...], strategy: str
) -> dict[str, Any]:
    per_phase = np.nanmean([r[strategy][key]["per_phase"] for r in runs], axis=0)
    return {
        "mean": float(np.nanmean([r[strategy][key]["mean"] for r in runs])),
        "per_phase": {name: float(v) for name, v in zip(names, per_phase, strict=True)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=3, help="annotated z slices (k)")
    ap.add_argument("--budget", type=float, default=120.0, help="fine-tuning seconds")
    ap.add_argument("--steps", type=int, help="step budget instead (reproducible)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument(
        "--mode", choices=["2d", "2.5d"], help="fine-tuned model's mode (default: FinetuneConfig's)"
    )
    ap.add_argument(
        "--suggest", action="store_true", help="also fine-tune on the k most uncertain slices"
    )
    ap.add_argument(
        "--context-slices", type=int, default=5, help="slices a 2.5D fine-tuned model sees"
    )
    ap.add_argument(
        "--strokes",
        action="store_true",
        help="also fine-tune on thin strokes through the same slices (against whole slices)",
    )
    ap.add_argument(
        "--stroke-fraction", type=float, default=0.1, help="share of a slice the strokes cover"
    )
    ap.add_argument("--no-rf", action="store_true", help="skip the random forest")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    ap.add_argument("--base", help="model file to start from (default: the bundled model)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_model(args.base or bundled_model_path())
    names = base.phases.names
    peak_fp32 = matmul_peak(torch.float32)
    peak_bf16 = matmul_peak(torch.bfloat16)
    runs = [run_seed(s, args, base) for s in args.seeds]
    train_seconds = float(np.mean([r["even"]["train_seconds"] for r in runs]))
    vox_per_s = float(
        np.sum([r["even"]["voxels_seen"] for r in runs])
        / np.sum([r["even"]["optimisation_seconds"] for r in runs])
    )
    steps_per_s = float(
        np.sum([r["even"]["steps"] for r in runs])
        / np.sum([r["even"]["optimisation_seconds"] for r in runs])
    )
    flops = float(np.mean([r["even"]["flops_per_voxel"] for r in runs]))
    result: dict[str, Any] = {
        "benchmark": "finetune",
        "slices": args.slices,
        "budget": args.budget,
        "steps": args.steps,
        "seeds": args.seeds,
        "shape": args.shape,
        "threads": torch.get_num_threads(),
        "base": base.source.name if base.source else None,
        "mode": args.mode,
        "context_slices": args.context_slices,
        "before": summarise(runs, "before", names, "even"),
        "after": summarise(runs, "after", names, "even"),
        "bin_mean": summarise(runs, "bin", names, "even")["mean"],
        "rf_mean": None if args.no_rf else summarise(runs, "rf", names, "even")["mean"],
        "rf": None if args.no_rf else summarise(runs, "rf", names, "even"),
        "rf_rings_mean": None if args.no_rf else summarise(runs, "rf_rings", names, "even")["mean"],
        "train_seconds": train_seconds,
        "train_steps": float(np.mean([r["even"]["steps"] for r in runs])),
        "train_voxels_per_s": vox_per_s,
        "train_steps_per_s": steps_per_s,
        "train_flops_per_voxel": flops,
        "peak_fp32_flops": peak_fp32,
        "peak_bf16_flops": peak_bf16,
        "train_fraction_of_peak": vox_per_s * flops / max(peak_fp32, peak_bf16),
    }
    if args.suggest:
        result["after_suggested"] = summarise(runs, "after", names, "suggested")
        result["suggested_slices"] = {r["seed"]: r["suggested"]["slices"] for r in runs}
    if args.strokes:
        whole = summarise(runs, "after", names, "even")
        strokes = summarise(runs, "after", names, "strokes")
        result["stroke_fraction"] = args.stroke_fraction
        result["annotated_voxels"] = {
            "whole_slices": float(np.mean([r["even"]["annotated_voxels"] for r in runs])),
            "strokes": float(np.mean([r["strokes"]["annotated_voxels"] for r in runs])),
        }
        result["whole_slices_mean"] = whole["mean"]
        result["strokes_mean"] = strokes["mean"]
        result["strokes_over_whole"] = strokes["mean"] / whole["mean"]
        result["after_strokes"] = strokes
    result["runs"] = [
        {
            "seed": r["seed"],
            **{
                s: {
                    k: (v["mean"] if isinstance(v, dict) and "mean" in v else v)
                    for k, v in r[s].items()
                    if k
                    in (
                        "slices",
                        "before",
                        "after",
                        "bin",
                        "rf",
                        "rf_rings",
                        "steps",
                        "train_seconds",
                        "annotated_voxels",
                        "validation",
                    )
                }
                for s in r
                if s != "seed"
            },
        }
        for r in runs
    ]
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
