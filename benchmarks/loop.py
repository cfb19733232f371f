"""Correction-loop benchmark: annotate one slice, fine-tune, let ``suggest`` name the next, repeat.

The loop a user runs, on the shifted-domain phantoms of ``finetune.py`` (seeds 500-502, 64x256x256):

    round 1   annotate the middle z slice (ground truth), fine-tune ``--budget-per-round`` s from the
              bundled model
    round r   add the slice ``suggest`` names (``rank_slices`` on the current model's entropy, annotated
              slices excluded and their neighbours weighed down), continue fine-tuning the last model
              for ``--budget-per-round`` s

After every round the mean Jaccard on the never-annotated slices, next to the one-shot result (3 evenly
spaced slices, ``--one-shot-budget`` s from the bundled model: the same annotation effort and training
time as 3 rounds) and the random forest given the round-1 slice. One evaluation set per seed for all of
them: every slice except those the loop (any round) or the one-shot annotated.

    python benchmarks/loop.py                      # last line: one JSON object
    python benchmarks/loop.py --budget-per-round 10 --one-shot-budget 30 --seeds 500 --no-rf
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# This folder holds a ``dask.py`` benchmark: keep it from shadowing the real dask package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]

from finetune import SEEDS, evenly_spaced, random_forest, score, shifted_domain  # noqa: E402

from napari_tomoseg.core.learn.finetune import FinetuneConfig, finetune  # noqa: E402
from napari_tomoseg.core.measure.uncertainty import entropy, rank_slices  # noqa: E402
from napari_tomoseg.core.model import bundled_model_path, load_model  # noqa: E402
from napari_tomoseg.core.phantom.composite import make_phantom  # noqa: E402
from napari_tomoseg.core.segment import InferenceConfig, segment_volume  # noqa: E402

log = logging.getLogger("benchmarks.loop")


def predict(vol: np.ndarray, model: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels and per-voxel entropy of ``model`` on ``vol`` (its own mode, slices along z)."""
    probs = np.zeros((len(model.phases), *vol.shape), np.float32)
    labels = segment_volume(vol, model, InferenceConfig(axis="z"), probabilities_out=probs).labels
    return np.asarray(labels), entropy(probs)


def tune(
    vol: np.ndarray, annotations: np.ndarray, base: Any, budget: float, seed: int
) -> tuple[Any, dict[str, Any]]:
    t0 = time.perf_counter()
    result = finetune(vol, annotations, base=base, config=FinetuneConfig(budget=budget, seed=seed))
    info = {
        "train_seconds": time.perf_counter() - t0,
        "optimisation_seconds": result.seconds,
        "steps": result.steps,
        "stopped": result.stopped,
        "mode": result.model.defaults.mode,
        "validation": result.validation,
    }
    return result.model, info


def run_seed(seed: int, args: argparse.Namespace, base: Any) -> dict[str, Any]:
    ph = make_phantom(shifted_domain(tuple(args.shape)), seed=seed)
    vol, truth = ph.volume, ph.labels
    n = len(base.phases)
    nz = vol.shape[0]

    # the loop: one slice, then the slice suggest names, continuing from the last model
    annotated = [nz // 2]
    annotations = np.zeros_like(truth)
    model = base
    rounds: list[dict[str, Any]] = []
    predictions: list[np.ndarray] = []
    uncertainty: np.ndarray | None = None  # the last model's entropy
    for r in range(args.rounds):
        if uncertainty is not None:
            pick = rank_slices(uncertainty, axis=0, n=1, annotations=annotations)[0]
            annotated.append(pick.index)
        annotations[annotated[-1]] = truth[annotated[-1]]
        model, info = tune(vol, annotations, model, args.budget_per_round, args.seed + r)
        labels, uncertainty = predict(vol, model)
        predictions.append(labels)
        info["slices"] = list(annotated)
        if r > 0:
            info["suggested"] = {
                "index": pick.index,
                "score": pick.score,
                "coverage": pick.coverage,
            }
        rounds.append(info)
        log.info("seed %d round %d slices %s: %d steps", seed, r + 1, annotated, info["steps"])

    # one shot: the same number of slices, evenly spaced, the loop's whole budget at once
    even = evenly_spaced(nz, args.one_shot_slices)
    one_annotations = np.zeros_like(truth)
    one_annotations[even] = truth[even]
    one_model, one_info = tune(vol, one_annotations, base, args.one_shot_budget, args.seed)
    one_labels, _ = predict(vol, one_model)

    keep = np.ones(vol.shape, bool)
    keep[sorted(set(annotated) | set(even))] = False
    for info, labels in zip(rounds, predictions, strict=True):
        info.update(score(labels, truth, keep, n))
    one_info.update(score(one_labels, truth, keep, n), slices=even)
    out: dict[str, Any] = {
        "seed": seed,
        "evaluated_slices": int(keep[:, 0, 0].sum()),
        "rounds": rounds,
        "one_shot": one_info,
    }
    if not args.no_rf:
        first = np.zeros_like(truth)
        first[annotated[0]] = truth[annotated[0]]
        out["rf_one_slice"] = score(random_forest(vol, first, seed), truth, keep, n)
    log.info(
        "seed %d: rounds %s one-shot %.3f rf %s",
        seed,
        " ".join(f"{r['mean']:.3f}" for r in rounds),
        one_info["mean"],
        f"{out['rf_one_slice']['mean']:.3f}" if "rf_one_slice" in out else "-",
    )
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, (float, np.floating)):
        return None if not np.isfinite(v) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3, help="annotate-fine-tune rounds")
    ap.add_argument("--budget-per-round", type=float, default=40.0, help="seconds per round")
    ap.add_argument(
        "--one-shot-budget", type=float, default=120.0, help="seconds of the one-shot fine-tune"
    )
    ap.add_argument(
        "--one-shot-slices", type=int, help="evenly spaced slices of the one shot (default: rounds)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--shape", type=int, nargs=3, default=[64, 256, 256])
    ap.add_argument("--seed", type=int, default=0, help="training seed (round r: seed + r - 1)")
    ap.add_argument("--no-rf", action="store_true", help="skip the random forest")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    ap.add_argument("--base", help="model file to start from (default: the bundled model)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be >= 1, got {args.rounds}")
    args.one_shot_slices = args.one_shot_slices or args.rounds
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_model(args.base or bundled_model_path())
    t0 = time.perf_counter()
    runs = [run_seed(s, args, base) for s in args.seeds]
    result: dict[str, Any] = {
        "benchmark": "loop",
        "rounds": [
            float(np.mean([r["rounds"][i]["mean"] for r in runs])) for i in range(args.rounds)
        ],
        "one_shot": float(np.mean([r["one_shot"]["mean"] for r in runs])),
        "rf_one_slice": None
        if args.no_rf
        else float(np.mean([r["rf_one_slice"]["mean"] for r in runs])),
        "suggested_slices": {r["seed"]: r["rounds"][-1]["slices"] for r in runs},
        "n_rounds": args.rounds,
        "budget_per_round": args.budget_per_round,
        "one_shot_budget": args.one_shot_budget,
        "one_shot_slices": args.one_shot_slices,
        "seeds": args.seeds,
        "shape": args.shape,
        "threads": torch.get_num_threads(),
        "base": base.source.name if base.source else None,
        "seconds": time.perf_counter() - t0,
        "runs": runs,
    }
    print(json.dumps(_plain(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
