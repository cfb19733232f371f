"""Test-time augmentation benchmark: what averaging over the 8 symmetries gains on a shifted domain.

For each phantom seed of ``benchmarks/finetune.py`` (its shifted domain: thicker fibres, half the
contrast, twice the noise and rings): segment with the bundled model without and with TTA, then
fine-tune it briefly on k evenly spaced annotated z slices (``FinetuneConfig(steps=...)``) and
segment with the fine-tuned model without and with TTA. Jaccard is scored on every slice but the
annotated ones (the same voxels for all four), with ``core.measure.metrics.ConfusionAccumulator``;
time is the whole ``segment_volume`` call.

    python benchmarks/tta.py                       # last line: one JSON object
    python benchmarks/tta.py --seeds 500 --no-finetune --shape 32 256 256
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# This folder holds a ``dask.py`` benchmark: keep it from shadowing the real dask package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from _common import emit, machine  # noqa: E402
from finetune import SEEDS, evenly_spaced, score, shifted_domain  # noqa: E402

from napari_tomoseg.core.learn.finetune import FinetuneConfig, finetune  # noqa: E402
from napari_tomoseg.core.model import bundled_model_path, load_model  # noqa: E402
from napari_tomoseg.core.phantom import make_phantom  # noqa: E402
from napari_tomoseg.core.segment import InferenceConfig, segment_volume  # noqa: E402

log = logging.getLogger("benchmarks.tta")


def segment_both(
    vol: np.ndarray, truth: np.ndarray, keep: np.ndarray, model: Any, n: int
) -> dict[str, Any]:
    """Scores and seconds of ``model`` on ``vol`` without and with test-time augmentation."""
    out: dict[str, Any] = {}
    labels = {}
    for name, tta in (("plain", False), ("tta", True)):
        t0 = time.perf_counter()
        labels[name] = segment_volume(vol, model, InferenceConfig(axis="z", tta=tta)).labels
        out[name] = {**score(labels[name], truth, keep, n), "seconds": time.perf_counter() - t0}
    out["time_ratio"] = out["tta"]["seconds"] / out["plain"]["seconds"]
    out["gain"] = out["tta"]["mean"] - out["plain"]["mean"]
    out["changed_fraction"] = float((labels["plain"] != labels["tta"]).mean())
    return out


def run_seed(seed: int, args: argparse.Namespace, base: Any) -> dict[str, Any]:
    ph = make_phantom(shifted_domain(tuple(args.shape)), seed=seed)
    vol, truth = ph.volume, ph.labels
    n = len(base.phases)
    chosen = evenly_spaced(vol.shape[0], args.slices)
    keep = np.ones(vol.shape, bool)
    keep[chosen] = False
    out: dict[str, Any] = {"seed": seed, "slices": chosen}
    out["bundled"] = segment_both(vol, truth, keep, base, n)
    if not args.no_finetune:
        annotations = np.zeros_like(truth)
        annotations[chosen] = truth[chosen]
        t0 = time.perf_counter()
        tuned = finetune(
            vol, annotations, base=base, config=FinetuneConfig(steps=args.steps, budget=None)
        ).model
        out["finetune_seconds"] = time.perf_counter() - t0
        out["finetuned"] = segment_both(vol, truth, keep, tuned, n)
    for key in ("bundled", "finetuned"):
        if key in out:
            r = out[key]
            log.info(
                "seed %d %s: plain %.4f tta %.4f (gain %+.4f), %.1fx the time, %.2f %% changed",
                seed,
                key,
                r["plain"]["mean"],
                r["tta"]["mean"],
                r["gain"],
                r["time_ratio"],
                100 * r["changed_fraction"],
            )
    return out


def summarise(runs: list[dict[str, Any]], key: str, names: tuple[str, ...]) -> dict[str, Any]:
    def phases(which: str) -> dict[str, float]:
        per = np.nanmean([r[key][which]["per_phase"] for r in runs], axis=0)
        return {name: float(v) for name, v in zip(names, per, strict=True)}

    return {
        "plain": float(np.mean([r[key]["plain"]["mean"] for r in runs])),
        "tta": float(np.mean([r[key]["tta"]["mean"] for r in runs])),
        "gain": float(np.mean([r[key]["gain"] for r in runs])),
        "gain_per_seed": [r[key]["gain"] for r in runs],
        "plain_per_phase": phases("plain"),
        "tta_per_phase": phases("tta"),
        "time_ratio": float(np.mean([r[key]["time_ratio"] for r in runs])),
        "plain_seconds": float(np.mean([r[key]["plain"]["seconds"] for r in runs])),
        "changed_fraction": float(np.mean([r[key]["changed_fraction"] for r in runs])),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--slices", type=int, default=3, help="annotated z slices for fine-tuning")
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps (short: CPU time)")
    ap.add_argument("--no-finetune", action="store_true", help="the bundled model only")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_model(bundled_model_path())
    t0 = time.perf_counter()
    runs = [run_seed(s, args, base) for s in args.seeds]
    result: dict[str, Any] = {
        "benchmark": "tta",
        "seeds": args.seeds,
        "shape": args.shape,
        "slices": args.slices,
        "steps": None if args.no_finetune else args.steps,
        "symmetries": 8,
        "mode": base.defaults.mode,
        "bundled": summarise(runs, "bundled", base.phases.names),
        "finetuned": None if args.no_finetune else summarise(runs, "finetuned", base.phases.names),
        "finetune_seconds": None
        if args.no_finetune
        else float(np.mean([r["finetune_seconds"] for r in runs])),
        "seconds": time.perf_counter() - t0,
        "machine": machine(),
    }
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
