"""Reports of a segmentation: phase fractions and volumes, the last evaluation, the model, as JSON/CSV/text.

labels + phases (+ Evaluation, + model provenance) -> :func:`build_report` (a JSON-ready dict)
-> :func:`report_csv` (one row per phase) ; Evaluation -> :func:`evaluation_text` (tables for a terminal).
The Export widget and ``tomoseg evaluate`` write what these return; nothing here touches files.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np

from napari_tomoseg import __version__
from napari_tomoseg.core.measure.evaluate import Evaluation
from napari_tomoseg.core.measure.inputs import json_number
from napari_tomoseg.core.phases import PhaseTable

__all__ = [
    "build_report",
    "evaluation_text",
    "format_cell",
    "held_out_comparison",
    "report_csv",
    "table_to_csv",
    "trained_on_warning",
    "trained_scores",
]


def build_report(
    labels: Any,
    phases: PhaseTable,
    *,
    voxel_size: Sequence[float] | None,
    name: str,
    evaluation: Evaluation | None = None,
    model_provenance: dict[str, Any] | None = None,
    model_name: str | None = None,
) -> dict[str, Any]:
    """The report of a label volume, ready for ``json.dumps``.

    Parameters
    ----------
    labels : array of int, shape (z, y, x)
        Phase ids 0..C (0 is not counted); read slab by slab.
    phases : PhaseTable
        Names and colours of ids 1..C.
    voxel_size : (z, y, x) in µm, or None
        Gives volumes in µm³.
    name : str
        What the labels are (a layer or file name); stored under ``"layer"``.
    evaluation : Evaluation, optional
        An evaluation of these labels: adds ``"evaluation"`` and a per-phase ``"jaccard"``.
    model_provenance, model_name : optional
        The model that made the labels: adds ``"model"``.

    Returns
    -------
    dict
        ``software``, ``created`` (UTC, ISO 8601), ``layer``, ``shape``, ``voxel_size_um``,
        ``phases`` (id, name, colour, voxels, fraction, volume_um3 [, jaccard]) and the optional
        ``evaluation`` and ``model``. Undefined numbers (NaN) are None.
    """
    from napari_tomoseg.core.measure.blobs import phase_statistics

    stats = phase_statistics(labels, phases, voxel_size=voxel_size)
    report: dict[str, Any] = {
        "software": f"napari-tomoseg {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "layer": name,
        "shape": [int(s) for s in np.shape(labels)],
        "voxel_size_um": [float(v) for v in voxel_size] if voxel_size is not None else None,
        "phases": [
            {
                "id": s.id,
                "name": s.name,
                "colour": phases.phases[s.id - 1].colour,
                "voxels": s.voxels,
                "fraction": json_number(s.fraction),
                "volume_um3": s.volume_um3,
            }
            for s in stats
        ],
    }
    if evaluation is not None:
        report["evaluation"] = evaluation.to_json()
        for entry in report["phases"]:
            entry["jaccard"] = json_number(evaluation.jaccard[entry["id"] - 1])
    if model_provenance is not None or model_name is not None:
        report["model"] = {"name": model_name, "provenance": model_provenance}
    return report


def report_csv(report: dict[str, Any]) -> str:
    """The per-phase part of a :func:`build_report` report as CSV (then the mean Jaccard, if any)."""
    header = ["phase_id", "phase", "voxels", "fraction", "volume_um3", "jaccard"]
    rows = [
        [p["id"], p["name"], p["voxels"], p["fraction"], p["volume_um3"], p.get("jaccard")]
        for p in report["phases"]
    ]
    if "evaluation" in report:
        rows.append(["", "mean", "", "", "", report["evaluation"]["mean_jaccard"]])
    return table_to_csv(header, rows)


def table_to_csv(header: Sequence[str], rows: Sequence[Sequence[Any]], delimiter: str = ",") -> str:
    """A table (e.g. :meth:`Evaluation.table`) as CSV text; None becomes an empty cell."""
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def format_cell(value: Any, column: str) -> str:
    """One cell of :meth:`Evaluation.table` for display: fractions in %, volumes with 4 significant
    digits, scores with 4 decimals, ``n/a`` for an undefined number."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if "volume" in column:
        return f"{value:.4g}"
    if "fraction" in column:
        return f"{100 * value:.2f} %"
    return f"{value:.4f}"


def trained_scores(history: Sequence[Any], names: Sequence[str]) -> dict[str, float] | None:
    """Per-phase held-out Jaccard of the trained weights: the last validation of a training history
    (events with a ``validation`` tuple; a run closes with one), or None when none was validated."""
    last: tuple[float, ...] | None = None
    for event in history:
        v = getattr(event, "validation", None)
        if v is not None:
            last = tuple(v)
    return None if last is None else {n: float(x) for n, x in zip(names, last, strict=True)}


def held_out_comparison(
    start: dict[str, float] | None,
    final: dict[str, float] | None,
    kept: str,
    trained: dict[str, float] | None = None,
    *,
    start_scored: str = "",
    compared: Sequence[str] | None = None,
) -> list[str]:
    """Lines saying how a fine-tuning run did on its held-out voxels and which model it kept.

    Parameters
    ----------
    start, final : per-phase Jaccard, or None
        The starting model's scores (before any step) and the returned model's.
    kept : {"fine-tuned", "start"}
        Which model the run returned.
    trained : per-phase Jaccard, optional
        The trained weights' scores (what lost, when the starting model was kept).
    start_scored : str
        Why the starting model was not scored, when ``start`` is None.
    compared : phase names, optional
        The phases the two models were ranked on (those with enough held-out voxels); the means
        shown are over these, so they are the numbers that decided. Default: every phase.
    """
    if final is None:
        return ["no held-out voxels: the last weights were kept (nothing to compare them on)"]
    names = list(final) if compared is None else [n for n in final if n in set(compared)]
    left_out = [n for n in final if n not in names]
    on = f" of {', '.join(names)}" if left_out else ""
    few = f"; {', '.join(left_out)}: too few held-out voxels to compare" if left_out else ""

    def mean(scores: dict[str, float]) -> float:
        return _mean(scores[n] for n in names if n in scores)

    if start is None:
        why = f" (the starting model was not scored: {start_scored})" if start_scored else ""
        return [
            f"held-out Jaccard {_mean(final.values()):.3f}{why}",
            "per phase: " + ", ".join(f"{n} {_score(v)}" for n, v in final.items()),
        ]
    if kept == "start":
        lost = trained or {}
        vs = f" vs trained {mean(lost):.3f}" if lost else ""
        return [
            f"Kept the starting model: training did not beat it on the held-out voxels{on} "
            f"({mean(start):.3f}{vs}{few}) — annotate where it is wrong and fine-tune again",
            "per phase (start"
            + (" vs trained" if lost else "")
            + "): "
            + ", ".join(
                f"{n} {_score(v)}" + (f" vs {_score(lost[n])}" if n in lost else "")
                for n, v in start.items()
            ),
        ]
    return [
        f"Kept the fine-tuned model: held-out Jaccard{on} {mean(start):.3f} → {mean(final):.3f}"
        + (f" ({few[2:]})" if few else ""),
        "per phase: "
        + ", ".join(
            f"{n} {_score(start.get(n, float('nan')))} → {_score(v)}" for n, v in final.items()
        ),
    ]


def _score(value: float) -> str:
    return "n/a" if value != value else f"{value:.3f}"


def _mean(values: Any) -> float:
    a = np.asarray(list(values), dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def trained_on_warning(trained_on_voxels: int | None) -> str | None:
    """What to tell the user when scored voxels were trained on (None when none were, or unknown)."""
    if not trained_on_voxels:
        return None
    return f"includes {trained_on_voxels:,} voxels the model was trained on: scores are optimistic"


def evaluation_text(evaluation: Evaluation) -> str:
    """An evaluation for a terminal: a summary line, the per-phase table, the confusion matrix."""
    header, rows = evaluation.table()
    cells = [header] + [[format_cell(v, header[c]) for c, v in enumerate(row)] for row in rows]
    lines = [
        f"{evaluation.prediction_name} against {evaluation.reference_name} on "
        f"{evaluation.n_evaluated:,} voxels ({evaluation.region})",
    ]
    warning = trained_on_warning(evaluation.trained_on_voxels)
    if warning is not None:
        lines.append(f"warning: {warning}")
    if evaluation.baseline_note:
        lines.append(f"grey-level baseline: {evaluation.baseline_note}")
    lines += ["", *_align(cells)]
    names = list(evaluation.phases.names)
    matrix = [["reference \\ prediction", "none", *names]] + [
        [name, *(str(int(c)) for c in evaluation.confusion[i + 1])] for i, name in enumerate(names)
    ]
    lines += [
        "",
        "confusion matrix (voxels; rows: reference, columns: prediction):",
        *_align(matrix),
    ]
    return "\n".join(lines)


def _align(cells: list[list[str]]) -> list[str]:
    """Rows of text cells as lines: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[c]) for row in cells) for c in range(len(cells[0]))]
    return [
        "  ".join(
            f"{cell:<{widths[c]}}" if c == 0 else f"{cell:>{widths[c]}}"
            for c, cell in enumerate(row)
        ).rstrip()
        for row in cells
    ]
