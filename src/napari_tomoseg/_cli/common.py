"""Helpers every ``tomoseg`` subcommand shares: the user-error type, option parsing, tables, progress.

subcommand module -> parse and check its options here (``CliError`` on bad input) -> core calls
-> ``format_table`` / ``progress_bar`` for what the user sees.
Importing this module is cheap: torch, tqdm and the model code load inside the functions that need them.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core.model.modes import AXES, MODES

if TYPE_CHECKING:
    from napari_tomoseg.core.model import TomosegModel
    from napari_tomoseg.core.segment import InferenceConfig, SegmentPlan, SegmentResult

__all__ = [
    "CliError",
    "add_inference_options",
    "add_voxel_size_option",
    "check_grey_volume",
    "check_inference_options",
    "check_number",
    "check_outputs",
    "format_number",
    "format_table",
    "inference_config",
    "json_text",
    "load_model",
    "parse_duration",
    "parse_slices",
    "progress_bar",
    "run_plan",
    "set_threads",
    "voxel_size_option",
]


class CliError(Exception):
    """A user error with a message that says what to do; ``tomoseg`` prints it on one line."""


# --------------------------------------------------------------------------------------------
# option parsing


def check_number(
    value: float | None,
    option: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> None:
    """Refuse NaN, inf and values out of range for ``option`` (None: not given, nothing to check).

    ``minimum`` is inclusive, ``above`` exclusive (e.g. ``above=0``: positive).
    """
    if value is None:
        return
    if not math.isfinite(value):
        raise CliError(f"{option} must be a finite number, got {value}")
    if minimum is not None and value < minimum:
        raise CliError(f"{option} must be at least {minimum:g}, got {value:g}")
    if above is not None and value <= above:
        raise CliError(f"{option} must be more than {above:g}, got {value:g}")
    if maximum is not None and value > maximum:
        raise CliError(f"{option} must be at most {maximum:g}, got {value:g}")


def check_outputs(outputs: Sequence[Any], inputs: Sequence[Any]) -> None:
    """Refuse any output that is (or is inside, or holds) one of the inputs: CliError naming both
    paths. Checked before any work, with or without --overwrite (None entries are skipped)."""
    from napari_tomoseg.core.io import OutputIsInputError, check_not_input

    try:
        for out in outputs:
            check_not_input(out, inputs)
    except OutputIsInputError as err:
        raise CliError(str(err)) from None


def check_inference_options(args: argparse.Namespace, model: Any = None) -> None:
    """Check the options of :func:`add_inference_options` before anything is read or run.

    With ``model``, an overlap larger than half the tile (the model's tile when --tile is not
    given) is refused instead of being cut down silently.
    """
    check_number(getattr(args, "threads", None), "--threads", minimum=1)
    check_number(getattr(args, "batch_size", None), "--batch-size", minimum=1)
    check_number(getattr(args, "overlap", None), "--overlap", minimum=0)
    tile = getattr(args, "tile", None)
    if tile is not None and (tile < 8 or tile % 8):
        raise CliError(f"--tile must be a multiple of 8 and at least 8, got {tile}")
    overlap = getattr(args, "overlap", None)
    if model is not None and overlap is not None:
        edge = tile if tile is not None else model.defaults.tile
        if overlap > edge // 2:
            source = "--tile" if tile is not None else "the model's tile"
            raise CliError(
                f"--overlap {overlap} is more than half the tile ({source} {edge}); give at most "
                f"--overlap {edge // 2}, or a larger --tile"
            )


def set_threads(n: int | None) -> int:
    """Let torch use ``n`` CPU threads (None: the CPUs this process may use, see
    :func:`napari_tomoseg.core.threads.default_threads`); returns the count."""
    from napari_tomoseg.core.threads import configure_threads

    if n is not None and n < 1:
        raise CliError(f"--threads must be >= 1, got {n}")
    return configure_threads(n)


#: Help of every ``--voxel-size`` option, before the command's own default.
VOXEL_SIZE_HELP = (
    "one number or Z,Y,X with an optional unit, e.g. 1.3, 1.3um, 2,1.3,1.3µm, 0.5mm "
    "(default unit µm)"
)


def add_voxel_size_option(p: argparse.ArgumentParser, default: str) -> None:
    """Add ``--voxel-size SIZE`` to ``p``; ``default`` says where the size comes from without it."""
    p.add_argument("--voxel-size", metavar="SIZE", help=f"{VOXEL_SIZE_HELP}; default: {default}")


def voxel_size_option(text: str | None) -> tuple[float, float, float] | None:
    """``--voxel-size`` as ``(z, y, x)`` in µm (None when not given); CliError on a bad value."""
    from napari_tomoseg.core.measure.units import parse_voxel_size

    if text is None:
        return None
    try:
        return parse_voxel_size(text)
    except ValueError as err:
        raise CliError(f"--voxel-size: {err}") from None


def check_grey_volume(volume: Any, path: Any) -> None:
    """Refuse a boolean volume: it has no grey levels to segment (it is a mask or labels)."""
    if np.dtype(volume.dtype) == np.bool_:
        raise CliError(
            f"{path} is a boolean (binary) volume: it has no grey levels to segment; give the "
            "grey-value scan (a mask or labels go to --mask or --annotations)"
        )


def parse_duration(text: str) -> float:
    """``120``, ``120s``, ``2m``, ``1.5min``, ``1h`` -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*", text)
    if not m:
        raise CliError(f"--budget: cannot read the duration {text!r}; write e.g. 120s, 2m or 120")
    value = (
        float(m.group(1)) * {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]
    )
    if value <= 0:
        raise CliError(f"--budget must be more than 0 seconds, got {text!r}")
    return value


def parse_slices(text: str) -> tuple[int, list[int]]:
    """``z:10,50,90`` -> (0, [10, 50, 90]); the axis letter defaults to z."""
    axis_name, _, rest = text.rpartition(":")
    axis_name = axis_name.strip().lower() or "z"
    if axis_name not in AXES:
        raise CliError(f"slice axis must be z, y or x, got {axis_name!r} in {text!r}")
    try:
        indices = sorted({int(v) for v in rest.split(",") if v.strip()})
    except ValueError:
        raise CliError(f"cannot read slice indices in {text!r}; write e.g. z:10,50,90") from None
    if not indices:
        raise CliError(f"no slice index in {text!r}; write e.g. z:10,50,90")
    return AXES[axis_name], indices


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """The options of every command that segments (``segment``, ``demo``)."""
    p.add_argument("--model", help="model file (.safetensors); the bundled model if absent")
    p.add_argument("--mode", choices=list(MODES), help="default: the model's")
    p.add_argument(
        "--axis", choices=list(AXES), help="slicing axis for 2D/2.5D (default: the model's)"
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps"
    )
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument(
        "--tile", type=int, help="tile edge in voxels, a multiple of 8 (default: the model's)"
    )
    p.add_argument("--overlap", type=int, help="tile overlap in voxels (default: the model's)")
    p.add_argument(
        "--batch-size",
        type=int,
        help="tiles per forward pass (default: from --memory, free GPU memory, or 4)",
    )
    p.add_argument(
        "--ring-removal",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="subtract CT ring artifacts around the rotation axis (z) first, when the volume has "
        "any (default: as the model was trained; the bundled model does)",
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time augmentation: average the probabilities over the 8 flips and rotations "
        "of every tile (the 8 flips in 3D); 8x slower, smoother labels (default: the model's, "
        "off unless it records it)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="CPU threads for the network (default: the cores this process may use)",
    )
    p.add_argument(
        "--memory",
        metavar="SIZE",
        help="memory budget for the whole process, e.g. 2GB or 1.5GiB; picks the slab and batch "
        "sizes (too small for one tile: an error gives the minimum)",
    )


def inference_config(args: argparse.Namespace) -> InferenceConfig:
    """The :class:`InferenceConfig` the options of :func:`add_inference_options` ask for."""
    from napari_tomoseg.core.segment import InferenceConfig, parse_memory

    memory = getattr(args, "memory", None)
    return InferenceConfig(
        mode=getattr(args, "mode", None),
        axis=getattr(args, "axis", None),
        tile=getattr(args, "tile", None),
        overlap=getattr(args, "overlap", None),
        batch_size=getattr(args, "batch_size", None),
        device=getattr(args, "device", "auto"),
        precision=getattr(args, "precision", "auto"),
        memory=parse_memory(memory) if memory else None,
        ring_removal=getattr(args, "ring_removal", None),
        tta=getattr(args, "tta", None),
    )


def load_model(path: str | None) -> TomosegModel:
    """The model file at ``path``, or the bundled model when ``path`` is empty."""
    from napari_tomoseg.core.model import bundled_model_path
    from napari_tomoseg.core.model import load_model as load

    return load(path if path else bundled_model_path())


# --------------------------------------------------------------------------------------------
# output


def json_safe(value: Any) -> Any:
    """``value`` with NaN and inf turned into None (JSON null), numpy scalars and arrays into
    Python numbers and lists, tuples into lists; recursively."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_text(value: Any) -> str:
    """Valid JSON for ``value`` (NaN and inf as null; anything else unknown as its text)."""
    import json

    return json.dumps(json_safe(value), allow_nan=False, default=str)


def format_number(v: float) -> str:
    """A score with four decimals, ``n/a`` for NaN (a phase absent from both volumes)."""
    return "n/a" if np.isnan(v) else f"{v:.4f}"


def format_table(names: Sequence[str], columns: Mapping[str, npt.ArrayLike]) -> str:
    """A plain-text table: one row per phase plus the mean, one column per method."""
    width = max(8, *(len(n) for n in names))
    heads = list(columns)
    values = {h: np.asarray(columns[h], dtype=np.float64) for h in heads}
    lines = [f"{'phase':<{width}}  " + "  ".join(f"{h:>10}" for h in heads)]
    for i, name in enumerate(names):
        lines.append(
            f"{name:<{width}}  " + "  ".join(f"{format_number(values[h][i]):>10}" for h in heads)
        )
    means = [
        float(np.nanmean(values[h])) if not np.all(np.isnan(values[h])) else float("nan")
        for h in heads
    ]
    lines.append(f"{'mean':<{width}}  " + "  ".join(f"{format_number(m):>10}" for m in means))
    return "\n".join(lines)


def progress_bar(total: float, desc: str, *, unit: str = "vox", unit_scale: bool = True) -> Any:
    """A tqdm bar on stderr that hides itself when stderr is not a terminal and when done."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=unit_scale, disable=None, leave=False)


def run_plan(plan: SegmentPlan, *, out: Any = None, probabilities_out: Any = None) -> SegmentResult:
    """Run a segmentation plan to the end with a progress bar (voxels); returns its result."""
    from napari_tomoseg.core.progress import run_to_completion

    bar = progress_bar(int(np.prod(plan.shape)), "segment")
    last = [0]

    def update(event: Any) -> None:
        bar.update(event.done - last[0])
        last[0] = event.done

    try:
        return run_to_completion(plan.run(out, probabilities_out=probabilities_out), update)
    finally:
        bar.close()
