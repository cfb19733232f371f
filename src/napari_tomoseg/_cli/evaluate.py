"""``tomoseg evaluate PRED REF [--image VOLUME] [--model MODEL]``: per-phase Jaccard of a prediction.

PRED + REF (+ the grey VOLUME) -> checks (shape, integer ids, the prediction's phase table)
(+ MODEL: the annotations its fine-tuning held out and trained on, from its provenance)
-> core.measure.evaluate -> a Jaccard table (or JSON); with --image the Evaluate widget's report:
grey-level baseline column, fractions, volumes and the confusion matrix.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg._cli.common import CliError, format_table, json_text


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "evaluate", help="per-phase Jaccard of a prediction against reference labels"
    )
    p.add_argument("prediction")
    p.add_argument("reference", help="labels 1..C; 0 = not annotated (ignored)")
    p.add_argument(
        "--image",
        metavar="VOLUME",
        help="the grey volume both label files belong to: adds the grey-level baseline, phase "
        "fractions, volumes and the confusion matrix (the Evaluate widget's report)",
    )
    p.add_argument(
        "--model",
        metavar="MODEL",
        help="the fine-tuned model that made the prediction, when REF holds the annotations it was "
        "fine-tuned on: only the annotations it held out of training are scored (scores on "
        "voxels a model was trained on are optimistic)",
    )
    p.add_argument(
        "--all-annotated",
        action="store_true",
        help="with --model: score every annotated voxel, those the model was trained on included "
        "(they are counted, and the scores flagged as optimistic)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run(args: argparse.Namespace) -> int:
    """Score the prediction; print a table or JSON."""
    from napari_tomoseg.core import io
    from napari_tomoseg.core.measure.evaluate import evaluate
    from napari_tomoseg.core.phases import PhaseTable

    pred = io.read_labels(args.prediction)
    ref = io.read_labels(args.reference)
    if pred.shape != ref.shape:
        raise CliError(
            f"prediction {pred.shape} and reference {ref.shape} differ in shape; they must match voxel for voxel"
        )
    for name, arr, path in (
        ("prediction", pred, args.prediction),
        ("reference", ref, args.reference),
    ):
        if not np.issubdtype(arr.dtype, np.integer):
            raise CliError(
                f"{name} has dtype {arr.dtype}; expected integer phase labels (1..C, 0 = none)"
            )
        if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
            raise CliError(
                f"the {name} {path} holds negative ids (e.g. {int(arr.min())}); label files hold "
                "0 (none) and phase ids 1..C: remap them first"
            )
    if not ref.any():
        raise CliError(
            f"the reference {args.reference} has no annotated voxel (every voxel is 0 = not "
            "annotated): nothing to score; give a reference with phase ids 1..C"
        )
    image = None
    if args.image:
        image = io.read_volume(args.image, lazy=True)
        if tuple(image.shape) != pred.shape:
            raise CliError(
                f"image {tuple(image.shape)} and prediction {pred.shape} differ in shape; give "
                "the volume that was segmented"
            )
    scored = _scored_voxels(args, pred.shape)
    table = io.read_label_phases(args.prediction)
    if table is not None:
        for name, arr in (("prediction", pred), ("reference", ref)):
            extra = sorted(set(np.unique(arr).tolist()) - {0, *table.ids})
            if extra:
                raise CliError(
                    f"{name} holds phase ids {extra[:5]} that the prediction's phase table lacks "
                    f"({', '.join(f'{p.id}={p.name}' for p in table.phases)}); remap the labels first"
                )
        phases = table
    else:
        n = int(max(pred.max(), ref.max()))
        phases = PhaseTable.from_names([f"phase {i}" for i in range(1, n + 1)])
    from napari_tomoseg.core.measure.report import evaluation_text, trained_on_warning

    # Scored as always: a prediction of 0 on an annotated voxel is a miss, not left out.
    try:
        evaluation = evaluate(
            pred,
            ref,
            phases=phases,
            image=image,
            exclude_outside=False,
            voxel_size=None
            if image is None
            else io.read_voxel_size(args.prediction) or io.read_voxel_size(args.image),
            prediction_name=str(args.prediction),
            reference_name=str(args.reference),
            **scored,
        )
    except ValueError as err:
        raise CliError(f"{args.reference}: {err}") from None
    warning = trained_on_warning(evaluation.trained_on_voxels)
    if args.json:
        print(json_text(_jaccard_only(evaluation) if image is None else evaluation.to_json()))
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    elif image is None:
        print(f"{evaluation.n_evaluated:,} voxels scored ({evaluation.region})")
        if warning:
            print(f"warning: {warning}")
        print(format_table(phases.names, {"Jaccard": evaluation.jaccard}))
    else:
        print(evaluation_text(evaluation))
    return 0


def _scored_voxels(args: argparse.Namespace, shape: tuple[int, ...]) -> dict[str, Any]:
    """``evaluate`` options for the voxels to score: with ``--model``, the annotations its
    fine-tuning held out (unless ``--all-annotated``), and the ones it trained on, counted."""
    if not args.model:
        return {}
    from napari_tomoseg._cli.common import load_model
    from napari_tomoseg.core.learn.finetune import held_out_mask

    provenance = load_model(args.model).provenance or {}
    name = Path(args.model).name
    if "train_slices" not in provenance:
        raise CliError(
            f"{args.model} records no fine-tuning (no training annotations in its provenance): "
            "leave out --model to score every annotated voxel"
        )
    trained_shape = provenance.get("data_shape")
    if trained_shape is not None and tuple(trained_shape) != tuple(shape):
        raise CliError(
            f"{args.model} was fine-tuned on a volume of shape {tuple(trained_shape)}, but the "
            f"prediction is {tuple(shape)}: its held-out annotations do not apply; leave out --model"
        )
    record = provenance.get("held_out")
    axis = "zyx".index(provenance.get("annotation_axis", "z"))
    try:
        held = held_out_mask(record, shape) if record else np.zeros(shape, bool)
    except (ValueError, KeyError, TypeError) as err:
        raise CliError(
            f"{args.model}: the held-out annotations it records do not fit: {err}"
        ) from None
    trained = np.zeros(shape, bool)
    key: list[Any] = [slice(None)] * 3
    key[axis] = [int(i) for i in provenance["train_slices"] if 0 <= int(i) < shape[axis]]
    trained[tuple(key)] = True
    trained &= ~held
    if not record or args.all_annotated:
        why = "" if record else f"; {name} held none out of training"
        return {"trained_on": trained, "region_name": f"all annotated voxels{why}"}
    words = ", ".join(map(str, record["slices"]))
    what = "bands of slices" if record.get("kind") == "band" else "slices"
    return {
        "mask": held,
        "held_out": True,
        "trained_on": trained,
        "region_name": f"held-out {what} {words} along {'zyx'[axis]}, kept out of training {name}; "
        "--all-annotated scores every annotated voxel",
    }


def _jaccard_only(ev: Any) -> dict[str, Any]:
    """Per-phase Jaccard, mean, confusion matrix (reference rows 1..C), the scored region and the
    trained-on voxels among them, as JSON types."""
    return {
        "per_phase": {
            name: (None if np.isnan(s) else float(s))
            for name, s in zip(ev.phases.names, ev.jaccard, strict=True)
        },
        "mean": None if np.isnan(ev.mean_jaccard) else ev.mean_jaccard,
        "confusion_matrix": ev.confusion[1:, :].tolist(),
        "region": ev.region,
        "evaluated_voxels": ev.n_evaluated,
        "trained_on_voxels": ev.trained_on_voxels,
    }
