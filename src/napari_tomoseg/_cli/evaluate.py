"""``tomoseg evaluate PRED REF [--image VOLUME]``: per-phase Jaccard of a prediction against reference labels.

PRED + REF (+ the grey VOLUME) -> checks (shape, integer ids, the prediction's phase table)
-> core.measure.evaluate -> a Jaccard table (or JSON); with --image the Evaluate widget's report:
grey-level baseline column, fractions, volumes and the confusion matrix.
"""

from __future__ import annotations

import argparse
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
    if image is None:
        # Scored as always: a prediction of 0 on an annotated voxel is a miss, not left out.
        result = _jaccard_only(pred, ref, phases)
        if args.json:
            print(json_text(result))
        else:
            scores = [np.nan if v is None else v for v in result["per_phase"].values()]
            print(format_table(phases.names, {"Jaccard": scores}))
        return 0
    from napari_tomoseg.core.measure.report import evaluation_text

    evaluation = evaluate(
        pred,
        ref,
        phases=phases,
        image=image,
        exclude_outside=False,
        voxel_size=io.read_voxel_size(args.prediction) or io.read_voxel_size(args.image),
        prediction_name=str(args.prediction),
        reference_name=str(args.reference),
    )
    print(json_text(evaluation.to_json()) if args.json else evaluation_text(evaluation))
    return 0


def _jaccard_only(pred: np.ndarray, ref: np.ndarray, phases: Any) -> dict[str, Any]:
    """Per-phase Jaccard, mean and confusion matrix (reference rows 1..C) as JSON types; the
    reference holds annotated voxels (checked by :func:`run`)."""
    from napari_tomoseg.core.measure.evaluate import evaluate

    ev = evaluate(pred, ref, phases=phases, exclude_outside=False)
    return {
        "per_phase": {
            name: (None if np.isnan(s) else float(s))
            for name, s in zip(phases.names, ev.jaccard, strict=True)
        },
        "mean": ev.mean_jaccard,
        "confusion_matrix": ev.confusion[1:, :].tolist(),
    }
