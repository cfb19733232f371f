"""``tomoseg train``: fine-tune a model on a few annotated slices of a volume.

volume + annotations (+ base model) -> plan (printed notes) -> fine-tuning with a progress bar
-> model file (written atomically, never over an existing file without --overwrite) + the starting and
the kept model's Jaccard on the held-out annotations, and which model was kept.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg._cli.common import (
    CliError,
    add_voxel_size_option,
    check_grey_volume,
    check_number,
    check_outputs,
    format_table,
    load_model,
    parse_duration,
    parse_slices,
    progress_bar,
    set_threads,
    voxel_size_option,
)
from napari_tomoseg.core.learn.finetune import FinetuneConfig
from napari_tomoseg.core.model.modes import TRAIN_MODES


def _keep_slices(annotations: np.ndarray, axis: int, indices: list[int]) -> np.ndarray:
    n = annotations.shape[axis]
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise CliError(f"slices {bad} are outside the volume (0..{n - 1} along {'zyx'[axis]})")
    keep = np.zeros(n, bool)
    keep[indices] = True
    shape = [1, 1, 1]
    shape[axis] = n
    out = np.where(keep.reshape(shape), annotations, 0).astype(annotations.dtype)
    empty = [i for i in indices if not np.take(out, i, axis=axis).any()]
    if empty:
        raise CliError(
            f"slices {empty} along {'zyx'[axis]} hold no annotation; choose annotated slices"
        )
    return out


def run(args: argparse.Namespace) -> int:
    """Fine-tune, save the model and print the validation table."""
    from napari_tomoseg.core import io
    from napari_tomoseg.core.learn.finetune import plan_finetune
    from napari_tomoseg.core.model import save_model
    from napari_tomoseg.core.phases import PhaseTable

    t_start = time.perf_counter()
    out = Path(args.output).expanduser()
    if out.suffix != ".safetensors":
        raise CliError(f"model files end in .safetensors, got {out.name!r}")
    check_number(args.steps, "--steps", minimum=1)
    check_number(args.lr, "--lr", above=0)
    check_number(args.patience, "--patience", minimum=1)
    check_number(args.threads, "--threads", minimum=1)
    check_number(args.seed, "--seed", minimum=0)
    check_number(args.context_slices, "--context-slices", minimum=1)
    given_voxel_size = voxel_size_option(args.voxel_size)
    check_outputs([out], [args.input, args.annotations, args.base])
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} exists; choose another name or pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise CliError(f"folder {out.parent} does not exist; create it first")
    # Before any training: a model that cannot be saved must not cost a whole run.
    io.check_writable_folder(out.parent)
    io.remove_stale_temporaries(out.parent)
    budget = parse_duration(args.budget) if args.budget is not None else None
    if budget is None and args.steps is None:
        budget = 120.0
    volume = io.read_volume(args.input, lazy=True)
    io.check_volume(volume, name=str(args.input))
    check_grey_volume(volume, args.input)
    # Every slice read for training is checked for NaN / inf, named after the file.
    volume = io.finite_checked(volume, str(args.input))
    try:
        annotations = io.read_labels(args.annotations)
    except ValueError as err:
        raise CliError(f"{args.annotations}: {err}") from None
    if annotations.shape != tuple(volume.shape):
        raise CliError(
            f"annotations {args.annotations} have shape {annotations.shape} but the volume is "
            f"{tuple(volume.shape)}; they must match voxel for voxel"
        )
    axis = None
    if args.slices:
        axis, indices = parse_slices(args.slices)
        annotations = _keep_slices(annotations, axis, indices)
    validation = "auto"
    val_slices: tuple[int, ...] = ()
    if args.val:
        if args.val in ("auto", "band", "none"):
            validation = args.val
        else:
            val_axis, val_list = parse_slices(args.val)
            if axis is not None and val_axis != axis:
                raise CliError("--val and --slices must name the same axis")
            axis, validation, val_slices = val_axis, "slices", tuple(val_list)
    phases = None
    if args.phases:
        names = [n.strip() for n in args.phases.split(",") if n.strip()]
        phases = PhaseTable.from_names(names)
    if args.scratch and args.base:
        raise CliError("give either --base MODEL or --scratch, not both")
    base = None if args.scratch else load_model(args.base)
    config = FinetuneConfig(
        budget=budget,
        steps=args.steps,
        learning_rate=args.lr,
        optimizer=args.optimizer,
        augment=not args.no_augment,
        validation=validation,  # type: ignore[arg-type]
        validation_slices=val_slices,
        axis=axis,
        seed=args.seed,
        mode=args.mode,
        context_slices=args.context_slices,
        patience=args.patience,
    )
    set_threads(args.threads)
    try:
        plan = plan_finetune(volume.shape, annotations, base=base, phases=phases, config=config)
    except ValueError as err:  # about the annotations: name their file
        raise CliError(f"{args.annotations}: {err}") from None
    n_slices = len(set(plan.train_slices) | set(plan.validation_slices))
    print(
        f"fine-tuning {'from scratch' if base is None else (base.source.name if base.source else 'model')} "
        f"on {n_slices} annotated slice(s) along {'zyx'[plan.axis]} "
        f"({', '.join(f'{n}: {c}' for n, c in zip(plan.phases.names, plan.counts, strict=True))} voxels); "
        f"held out for validation: {_held_out_words(plan)}"
    )
    for note in plan.notes:
        print(f"note: {note}")
    result = _finetune_with_progress(
        volume, annotations, base, phases, config, args.device, plan.notes
    )
    model = result.model
    model.provenance["annotations_file"] = str(args.annotations)
    model.provenance["volume_file"] = str(args.input)
    voxel_size = given_voxel_size or io.read_voxel_size(args.input)
    if voxel_size is not None:
        model.provenance["voxel_size_um"] = list(voxel_size)
    save_model(out, model, overwrite=args.overwrite)
    print(
        f"{result.steps} steps in {result.seconds:.1f} s ({result.voxels_seen / max(result.seconds, 1e-9) / 1e6:.2f} "
        f"Mvox/s, stopped by {result.stopped}); kept {result.kept}; "
        f"total {time.perf_counter() - t_start:.1f} s -> {out}"
    )
    _print_held_out_scores(result, from_scratch=base is None)
    return 0


def _held_out_words(plan: Any) -> str:
    """What the plan keeps out of training, in words."""
    axis = "zyx"[plan.axis]
    if plan.validation == "slices":
        return f"slices {', '.join(map(str, plan.validation_slices))} along {axis}"
    if plan.validation == "band":
        return f"a band of each annotated slice along {axis}"
    return "nothing (the last weights are kept)"


def _print_held_out_scores(result: Any, *, from_scratch: bool) -> None:
    """The starting and the kept model's Jaccard on the held-out annotations, and which was kept."""
    from napari_tomoseg.core.measure.report import held_out_comparison, trained_scores

    names = list(result.plan.phases.names)
    trained = trained_scores(result.history, names)
    if result.validation is not None:
        columns: dict[str, list[float]] = {}
        if result.start_validation is not None:
            columns["start"] = [result.start_validation[n] for n in names]
        if result.kept == "start" and trained is not None:
            columns["trained"] = [trained[n] for n in names]
        else:
            columns["fine-tuned"] = [result.validation[n] for n in names]
        print("Jaccard on the held-out annotations:")
        print(format_table(names, columns))
    why = (
        "it was trained from scratch"
        if from_scratch
        else "its output layer is new"
        if result.plan.replace_head
        else ""
    )
    for line in held_out_comparison(
        result.start_validation,
        result.validation,
        result.kept,
        trained,
        start_scored=why,
        compared=result.compared,
    ):
        print(line)


def _finetune_with_progress(
    volume: Any,
    annotations: np.ndarray,
    base: Any,
    phases: Any,
    config: Any,
    device: str,
    notes: Any = (),
) -> Any:
    from napari_tomoseg.core.learn.finetune import iter_finetune
    from napari_tomoseg.core.progress import CancelToken

    by_steps = config.steps is not None and config.budget is None
    total = config.steps if by_steps else config.budget
    bar = progress_bar(total, "train", unit="step" if by_steps else "s", unit_scale=False)
    gen = iter_finetune(
        volume,
        annotations,
        base=base,
        phases=phases,
        config=config,
        cancel=CancelToken(),
        device=device,
    )
    # The plan's notes were printed already; the core logs them again for library users.
    core_log = logging.getLogger("napari_tomoseg.core.learn.finetune")
    printed = _DropMessages(notes)
    core_log.addFilter(printed)
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            bar.n = event.step if by_steps else min(total, event.elapsed)
            post = {"loss": f"{event.loss:.3f}"}
            if event.best_mean is not None:
                post["val"] = f"{event.best_mean:.3f}"
            bar.set_postfix(post, refresh=True)
    finally:
        bar.close()
        core_log.removeFilter(printed)


class _DropMessages(logging.Filter):
    """Drop log records whose message is one of ``messages``."""

    def __init__(self, messages: Any) -> None:
        super().__init__()
        self.messages = set(messages)

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.messages


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``subparsers``; returns its parser."""
    p = subparsers.add_parser(
        "train",
        help="fine-tune a model on annotated slices of a volume",
        description="Fine-tune the bundled model (or --base, or --scratch) on a volume's annotations "
        "(0 = not annotated, 1..C = phases) and save it as a .safetensors file.",
    )
    p.add_argument(
        "input", help="volume: .tif/.tiff stack, folder of TIFF slices, .npy, .zarr, .h5"
    )
    p.add_argument("--annotations", "-a", required=True, help="label file of the same shape")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--base", help="model to start from (default: the bundled model)")
    p.add_argument("--scratch", action="store_true", help="train a new model from random weights")
    p.add_argument(
        "--mode",
        choices=list(TRAIN_MODES),
        help=(
            "mode of a --scratch model (default 2d); a 2D base model becomes 2.5D (it also sees "
            "neighbouring slices) unless --mode 2d"
        ),
    )
    p.add_argument(
        "--context-slices",
        type=int,
        default=5,
        help="slices a 2.5D model sees: the slice and its neighbours (odd, default 5)",
    )
    p.add_argument("--slices", help="use only these annotated slices, e.g. z:10,50,90")
    p.add_argument("--budget", help="optimisation time, e.g. 120s or 5m (default 120s)")
    p.add_argument("--steps", type=int, help="optimisation steps (reproducible with --seed)")
    p.add_argument(
        "--val",
        help="validation: auto (default), band, none, or slices to hold out, e.g. z:40,80",
    )
    p.add_argument("--phases", help="phase names for ids 1..C, e.g. pore,matrix,aggregate")
    p.add_argument(
        "--patience", type=int, help="stop after this many validations without improvement"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=FinetuneConfig.learning_rate,
        help=f"peak learning rate (default {FinetuneConfig.learning_rate:g})",
    )
    p.add_argument("--optimizer", choices=["adamw", "adabelief"], default="adamw")
    p.add_argument("--no-augment", action="store_true", help="no dihedral/intensity augmentation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    add_voxel_size_option(
        p, "read from the volume's file; recorded in the model file with the training data"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    return p
