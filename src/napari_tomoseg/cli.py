"""The ``tomoseg`` command: every GUI action as a script-friendly command.

tomoseg demo | synth | segment | evaluate | info  ->  core calls  ->  files and a printed table.
Bad input exits non-zero with a one-line message; no partial output file is ever left behind.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_tomoseg import __version__
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable

log = logging.getLogger("napari_tomoseg")


class CliError(Exception):
    """A user error with a message that says what to do."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _set_threads(n: int | None) -> None:
    if n is None:
        return
    if n < 1:
        raise CliError(f"--threads must be >= 1, got {n}")
    import torch

    torch.set_num_threads(n)


def format_table(names: Sequence[str], columns: dict[str, Sequence[float]]) -> str:
    """A plain-text table: one row per phase plus the mean, one column per method."""
    width = max(8, *(len(n) for n in names))
    heads = list(columns)
    lines = [f"{'phase':<{width}}  " + "  ".join(f"{h:>10}" for h in heads)]
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{_fmt(columns[h][i]):>10}" for h in heads))
    means = [
        float(np.nanmean(columns[h])) if not np.all(np.isnan(columns[h])) else float("nan")
        for h in heads
    ]
    lines.append(f"{'mean':<{width}}  " + "  ".join(f"{_fmt(m):>10}" for m in means))
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return "n/a" if np.isnan(v) else f"{v:.4f}"


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vox", unit_scale=True, disable=None, leave=False)


def _load_model(path: str | None) -> Any:
    from napari_tomoseg.core.model import bundled_model_path, load_model

    return load_model(path if path else bundled_model_path())


def _inference_config(args: argparse.Namespace) -> Any:
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
    )


def _segment(
    volume: Any,
    model: Any,
    args: argparse.Namespace,
    *,
    out: Any = None,
    probabilities_out: Any = None,
    predictor: Any = None,
) -> Any:
    from napari_tomoseg.core.progress import run_to_completion
    from napari_tomoseg.core.segment import Predictor, iter_segment

    config = _inference_config(args)
    if predictor is None:
        predictor = Predictor(model, device=config.device, precision=config.precision)
    bar = _progress_bar(int(np.prod(volume.shape)), "segment")
    last = [0]

    def update(event: Any) -> None:
        bar.update(event.done - last[0])
        last[0] = event.done

    try:
        result = run_to_completion(
            iter_segment(volume, predictor, config, out=out, probabilities_out=probabilities_out),
            update,
        )
    finally:
        bar.close()
    return result


class _CountingOut:
    """Writes label blocks to ``target`` and counts the voxels of each phase on the way."""

    def __init__(self, target: Any, n_phases: int) -> None:
        self.target = target
        self.shape = tuple(target.shape)
        self.counts = np.zeros(n_phases + 1, np.int64)

    def __setitem__(self, key: Any, labels: np.ndarray) -> None:
        self.counts += np.bincount(labels.ravel(), minlength=len(self.counts))[: len(self.counts)]
        self.target[key] = labels


class _EntropyOut:
    """Takes probability blocks (C, *block) and writes their normalised entropy as uint8 0..255."""

    def __init__(self, target: Any, n_phases: int) -> None:
        self.target = target
        self.shape = (n_phases, *target.shape)

    def __setitem__(self, key: Any, probabilities: np.ndarray) -> None:
        from napari_tomoseg.core.measure.uncertainty import entropy

        u = entropy(probabilities)
        self.target[key[1:]] = np.rint(u * np.float32(255)).astype(np.uint8)


def _output_chunks(settings: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """zarr chunks aligned with the blocks iter_segment writes (each chunk written once)."""
    if settings.mode in ("2d", "2.5d"):
        chunks = [512, 512, 512]
        chunks[settings.axis] = settings.block
    elif settings.mode == "3d":
        chunks = [settings.block, 512, 512]
    else:
        chunks = [settings.block] * 3
    return tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_segment(args: argparse.Namespace) -> int:
    import contextlib

    from napari_tomoseg.core import io
    from napari_tomoseg.core.segment import Predictor, format_bytes, resolve

    out_path = io.check_output_path(args.output, overwrite=args.overwrite)
    unc_path = (
        io.check_output_path(args.uncertainty, overwrite=args.overwrite)
        if args.uncertainty
        else None
    )
    if unc_path is not None and unc_path.resolve() == out_path.resolve():
        raise CliError("-o and --uncertainty name the same file; give two different paths")
    if args.scheduler and args.local_cluster:
        raise CliError("give either --scheduler or --local-cluster, not both")
    config = _inference_config(args)  # checks --memory and the other options early
    model = _load_model(args.model)
    volume = io.read_volume(args.input, dataset=args.dataset, lazy=True)
    _set_threads(args.threads)
    voxel_size = io.read_voxel_size(args.input, dataset=args.dataset)
    shape = tuple(int(s) for s in volume.shape)
    if args.scheduler or args.local_cluster:
        if unc_path is not None:
            raise CliError("--uncertainty is not available with --scheduler / --local-cluster yet")
        from napari_tomoseg.core.segment.distributed import segment_distributed

        result = segment_distributed(
            args.input,
            out_path,
            model,
            config,
            dataset=args.dataset,
            scheduler=args.scheduler,
            local_cluster=args.local_cluster,
            voxel_size=voxel_size,
            overwrite=args.overwrite,
        )
        fractions = result.counts[1:] / max(1, int(result.counts.sum()))
        seconds, device, precision, mode = result.seconds, "dask", result.precision, result.mode
    else:
        predictor = Predictor(model, device=config.device, precision=config.precision)
        settings = resolve(
            config,
            model,
            shape,
            itemsize=np.dtype(volume.dtype).itemsize,
            probabilities=unc_path is not None,
            device=predictor.device,
            dtype=predictor.dtype,
        )
        if settings.memory_estimate is not None:
            log.info(
                "memory budget %s: %d slices per block, %d tiles per batch, expected peak %s",
                format_bytes(config.memory),
                settings.block,
                settings.batch_size,
                format_bytes(settings.memory_estimate),
            )
        chunks = _output_chunks(settings, shape)
        with contextlib.ExitStack() as stack:
            source = stack.enter_context(
                io.rechunked(volume, folder=out_path.parent, name=str(args.input))
            )
            labels = stack.enter_context(
                io.streaming_output(
                    out_path,
                    shape,
                    phases=model.phases,
                    voxel_size=voxel_size,
                    chunks=chunks,
                    overwrite=args.overwrite,
                )
            )
            counting = _CountingOut(labels, len(model.phases))
            entropy_out = None
            if unc_path is not None:
                unc = stack.enter_context(
                    io.streaming_output(
                        unc_path,
                        shape,
                        kind="volume",
                        voxel_size=voxel_size,
                        chunks=chunks,
                        overwrite=args.overwrite,
                    )
                )
                entropy_out = _EntropyOut(unc, len(model.phases))
            result = _segment(
                source,
                model,
                args,
                out=counting,
                probabilities_out=entropy_out,
                predictor=predictor,
            )
        fractions = counting.counts[1:] / max(1, int(counting.counts.sum()))
        seconds, device, precision = result.seconds, result.device, result.precision
        mode = result.settings.mode
    n = int(np.prod(shape))
    extra = f" and {unc_path}" if unc_path is not None else ""
    print(
        f"segmented {args.input} {shape} in {seconds:.1f} s "
        f"({n / seconds / 1e6:.2f} Mvox/s, {device}, {precision}, mode {mode}) "
        f"-> {out_path}{extra}"
    )
    for name, f in zip(model.phases.names, fractions, strict=True):
        print(f"  {name:<10} {100 * f:6.2f} %")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_tomoseg.core import io
    from napari_tomoseg.core.measure.metrics import confusion_matrix, jaccard_from_confusion

    pred = io.read_labels(args.prediction)
    ref = io.read_labels(args.reference)
    if pred.shape != ref.shape:
        raise CliError(
            f"prediction {pred.shape} and reference {ref.shape} differ in shape; they must match voxel for voxel"
        )
    for name, arr in (("prediction", pred), ("reference", ref)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise CliError(
                f"{name} has dtype {arr.dtype}; expected integer phase labels (1..C, 0 = none)"
            )
    table = io.read_label_phases(args.prediction)
    n = int(max(pred.max(), ref.max()))
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
        phases = PhaseTable.from_names([f"phase {i}" for i in range(1, n + 1)])
    n = len(phases)
    cm = confusion_matrix(pred, ref, n)
    scores = jaccard_from_confusion(cm)
    if args.json:
        print(
            json.dumps(
                {
                    "per_phase": {
                        name: (None if np.isnan(s) else float(s))
                        for name, s in zip(phases.names, scores, strict=True)
                    },
                    "mean": float(np.nanmean(scores)),
                    "confusion_matrix": cm[1:, :].tolist(),
                }
            )
        )
    else:
        print(format_table(phases.names, {"Jaccard": scores}))
    return 0


def _phantom_config(args: argparse.Namespace) -> Any:
    from dataclasses import replace

    from napari_tomoseg.core.phantom.composite import PhantomConfig

    cfg = PhantomConfig(shape=tuple(args.shape), dtype=args.dtype)
    changes = {
        k: getattr(args, k)
        for k in (
            "contrast",
            "noise",
            "fibre_radius",
            "ring_strength",
            "blur",
            "cupping",
            "fibre_fraction",
            "pore_fraction",
        )
        if getattr(args, k) is not None
    }
    return replace(cfg, **changes)


def cmd_synth(args: argparse.Namespace) -> int:
    from napari_tomoseg.core import io
    from napari_tomoseg.core.phantom.composite import make_phantom

    vol_path = io.check_output_path(args.output, overwrite=args.overwrite)
    lab_path = io.check_output_path(args.labels, overwrite=args.overwrite)
    if vol_path.resolve() == lab_path.resolve():
        raise CliError("-o and --labels name the same file; give two different paths")
    ph = make_phantom(_phantom_config(args), seed=args.seed)
    io.write_volume(vol_path, ph.volume, overwrite=args.overwrite)
    io.write_labels(lab_path, ph.labels, phases=COMPOSITE_PHASES, overwrite=args.overwrite)
    from napari_tomoseg.core.measure.metrics import phase_fractions

    fr = phase_fractions(ph.labels, 3)
    print(
        f"wrote {vol_path} ({ph.volume.dtype}, {ph.volume.shape}) and {lab_path}; "
        + ", ".join(f"{n} {100 * f:.2f} %" for n, f in zip(COMPOSITE_PHASES.names, fr, strict=True))
    )
    return 0


def _fresh_folder(base: Path) -> Path:
    candidate, i = base, 1
    while candidate.exists():
        i += 1
        candidate = base.with_name(f"{base.name}-{i}")
    return candidate


def cmd_demo(args: argparse.Namespace) -> int:
    from napari_tomoseg.core import io
    from napari_tomoseg.core.measure.baseline import grey_level_baseline
    from napari_tomoseg.core.measure.metrics import jaccard_per_phase
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom

    _set_threads(args.threads)
    folder = Path(args.output) if args.output else _fresh_folder(Path("tomoseg-demo"))
    if folder.exists() and any(folder.iterdir()):
        raise CliError(f"{folder} is not empty; choose another --output folder")
    if not folder.parent.is_dir():
        raise CliError(f"folder {folder.parent} does not exist; create it first")
    t0 = time.perf_counter()
    ph = make_phantom(PhantomConfig(shape=tuple(args.shape)), seed=args.seed)
    t_synth = time.perf_counter() - t0
    model = _load_model(args.model)
    result = _segment(ph.volume, model, args)
    n = len(model.phases)
    unet = jaccard_per_phase(result.labels, ph.labels, n)
    grey = jaccard_per_phase(grey_level_baseline(ph.volume, ph.labels, n), ph.labels, n)
    folder.mkdir()
    io.write_volume(folder / "volume.tif", ph.volume)
    io.write_labels(folder / "truth.tif", ph.labels, phases=model.phases)
    io.write_labels(folder / "prediction.tif", result.labels, phases=model.phases)
    voxels = int(np.prod(ph.volume.shape))
    print(
        f"phantom {ph.volume.shape} {ph.volume.dtype} (seed {args.seed}, never used in training) made in {t_synth:.1f} s; "
        f"segmented with {model.source.name if model.source else 'model'} in {result.seconds:.1f} s "
        f"({voxels / result.seconds / 1e6:.2f} Mvox/s on {result.device}, {result.precision})"
    )
    print("per-phase Jaccard against the phantom's ground truth:")
    print(format_table(model.phases.names, {"U-Net": unet, "grey-level": grey}))
    print(f"wrote {folder}/volume.tif, truth.tif, prediction.tif")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    path = Path(args.file)
    info: dict[str, Any]
    if path.suffix == ".safetensors":
        from napari_tomoseg.core.model import count_parameters, load_model

        m = load_model(path)
        from dataclasses import asdict

        info = {
            "kind": "model",
            "path": str(path),
            "architecture": asdict(m.config),
            "parameters": count_parameters(m.network),
            "phases": m.phases.to_json(),
            "normalization": asdict(m.normalization),
            "inference_defaults": asdict(m.defaults),
            "provenance": m.provenance,
        }
    else:
        from napari_tomoseg.core import io
        from napari_tomoseg.core.prep.intensity import subsample

        vol = io.read_volume(path, lazy=True)
        sample = subsample(vol, 1_000_000)
        info = {
            "kind": "volume",
            "path": str(path),
            "shape": list(vol.shape),
            "dtype": str(vol.dtype),
            "megavoxels": float(np.prod(vol.shape)) / 1e6,
            "voxel_size": io.read_voxel_size(path),
            "sample_min": float(sample.min()),
            "sample_max": float(sample.max()),
            "sample_percentiles_0.5_99.5": [float(v) for v in np.percentile(sample, [0.5, 99.5])],
        }
        phases = io.read_label_phases(path)
        if phases is not None:
            info["phases"] = phases.to_json()
    if args.json:
        print(json.dumps(info, default=str))
    else:
        for k, v in info.items():
            print(f"{k:>22}: {v}")
    return 0


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model file (.safetensors); the bundled model if absent")
    p.add_argument("--mode", choices=["2d", "2d-3axes", "2.5d", "3d"], help="default: the model's")
    p.add_argument(
        "--axis", choices=["z", "y", "x"], help="slicing axis for 2D/2.5D (default: the model's)"
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
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument(
        "--memory",
        metavar="SIZE",
        help="memory budget for the whole process, e.g. 2GB or 1.5GiB; picks the slab and batch "
        "sizes (too small for one tile: an error gives the minimum)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tomoseg", description="Segment tomography volumes of materials into phases."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "demo", help="make a phantom, segment it with the bundled model, print per-phase Jaccard"
    )
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument(
        "--seed", type=int, default=0, help="phantom seed (0..99 are never used in training)"
    )
    p.add_argument("--output", help="folder for the files (default: a new ./tomoseg-demo folder)")
    _add_inference_options(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "segment",
        help="segment a volume into phases (streams block by block: volumes larger than memory)",
    )
    p.add_argument(
        "input",
        help="volume: .tif/.tiff stack, folder of TIFF slices, .npy, .zarr, .h5/.hdf5",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="label file to write (.zarr: a plain zarr v3 array; .tif or .npy)",
    )
    p.add_argument("--dataset", help="array inside a zarr group or HDF5 file holding several")
    p.add_argument(
        "--uncertainty",
        metavar="PATH",
        help="also write the normalised softmax entropy as uint8 0..255 (.zarr, .tif or .npy)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on an existing dask.distributed cluster, e.g. tcp://host:8786 (input and "
        "output must be zarr on storage every worker sees)",
    )
    p.add_argument(
        "--local-cluster",
        type=int,
        metavar="N",
        help="run on a dask LocalCluster of N worker processes on this machine",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_inference_options(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "evaluate", help="per-phase Jaccard of a prediction against reference labels"
    )
    p.add_argument("prediction")
    p.add_argument("reference", help="labels 1..C; 0 = not annotated (ignored)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "synth", help="write a synthetic glass-fibre composite volume and its ground truth"
    )
    p.add_argument("-o", "--output", required=True, help="volume file (.tif, .npy, .zarr)")
    p.add_argument("--labels", required=True, help="ground-truth label file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=[128, 128, 128], metavar=("Z", "Y", "X"))
    p.add_argument("--dtype", choices=["uint8", "uint16"], default="uint8")
    for name, text in (
        ("contrast", "fibre minus matrix intensity (matrix = 1)"),
        ("noise", "noise standard deviation"),
        ("fibre-radius", "mean fibre radius in voxels"),
        ("ring-strength", "ring artifact amplitude"),
        ("blur", "point-spread function sigma in voxels"),
        ("cupping", "beam-hardening cupping amplitude"),
        ("fibre-fraction", "target fibre volume fraction"),
        ("pore-fraction", "target pore volume fraction"),
    ):
        p.add_argument(f"--{name}", type=float, help=text)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="summary of a model or volume file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    # Larger commands live one per module in napari_tomoseg._cli and register themselves.
    import importlib

    for name in _COMMAND_MODULES:
        importlib.import_module(f"napari_tomoseg._cli.{name}").register(sub)
    return parser


#: Modules of ``napari_tomoseg._cli`` that each add one subcommand with ``register(subparsers)``.
_COMMAND_MODULES: tuple[str, ...] = ("clean", "train", "suggest", "gui")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("tomoseg: interrupted; no output was written", file=sys.stderr)
        return 130
    except (
        CliError,
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        PermissionError,
        ImportError,
    ) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"tomoseg: error: {msg}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"tomoseg: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
