"""Inference speed on CPU (or GPU): end to end, as a fraction of the matmul peak, and against MONAI.

A phantom of ``--slices`` x 1024 x 1024 (uint8, with ground truth) is segmented with the bundled model:

* the model's slice mode along z (``2d`` for the bundled model; ``2.5d``, each slice with its
  neighbours as channels, for a model that takes them) and ``2d-3axes`` (all three axes averaged), end to end:
  from the uint8 volume in memory to uint8 labels in memory (ring removal where the model asks for
  it, grey range, normalisation, tiling, network, stitching, argmax);
* ``3d``: a small random-weight 3D U-Net (8 base filters) in 3D mode on the first ``--size-3d``^2
  in-plane region (speed only);
* MONAI's ``sliding_window_inference`` with the *same* network (batch norm folded, channels-last,
  same dtype and thread count) slice by slice, with the same neighbouring slices as channels: roi
  512 x 512, overlap 0.25, gaussian blending, sw_batch_size 8, plus the same ring-corrected input,
  normalisation and argmax. The two alternate: after each block of ``--chunk`` slices of ours, MONAI segments the same
  slices, so that a change in machine load (this CPU is shared) hits both alike.

FLOPs per voxel come from ``torch.utils.flop_counter``; the fp32 and bf16 matmul peaks are measured in the
same run and ``fraction_of_peak`` is the slice mode's end-to-end model FLOP/s over the better of the two.

    python benchmarks/inference.py                 # 64 slices (the issue's volume)
    python benchmarks/inference.py --slices 16     # quicker
    python benchmarks/inference.py --slices 16 --tta   # with test-time augmentation (no MONAI)

``--busy-neighbour`` instead times the 128^3 sample volume (File > Open Sample) with nothing else
running and next to another process spinning a Python loop on one core, for the default thread
choice, for ``--threads`` = the core count, and for libgomp's own spinning wait (GOMP_SPINCOUNT
300000) with the default choice. Each runs in its own process (the OpenMP waiting policy is read
when torch loads); the timings alternate between them and ``--repeats`` medians are reported with
``busy_over_idle`` (default choice) and ``idle_default_over_idle_all_cores``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# This folder goes last on the path: benchmarks/dask.py must not shadow the dask package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
from _common import emit, flops_per_voxel, log, machine, matmul_peak, phantom  # noqa: E402

from napari_tomoseg.core.measure.metrics import jaccard_per_phase  # noqa: E402
from napari_tomoseg.core.model import (  # noqa: E402
    InferenceDefaults,
    ModularUNet,
    TomosegModel,
    UNetConfig,
    bundled_model_path,
    load_model,
)
from napari_tomoseg.core.prep.intensity import apply_range  # noqa: E402
from napari_tomoseg.core.segment import (  # noqa: E402
    InferenceConfig,
    Predictor,
    Segmenter,
)


def run_ours(volume: np.ndarray, segmenter: Segmenter) -> tuple[np.ndarray, float]:
    """Plan (preparation, grey range) and segment ``volume``, timed as a user's run is."""
    segmenter.plan(volume[:1]).segment()  # warm-up (oneDNN primitives)
    t0 = time.perf_counter()
    result = segmenter.plan(volume).segment()
    return result.labels, time.perf_counter() - t0


def run_monai(
    volume: Any,
    z0: int,
    z1: int,
    predictor: Predictor,
    grey: tuple[float, float],
    *,
    warm: bool = True,
) -> tuple[np.ndarray, float]:
    """MONAI's sliding window on slices ``z0 .. z1``, each with the 2.5D neighbours the network
    takes as channels (mirrored at the volume's ends, as ours does)."""
    from monai.inferers import sliding_window_inference

    net = predictor.network
    context = net.cfg.in_channels // 2
    nz = volume.shape[0]

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(
            predictor.device.type, dtype=predictor.dtype, enabled=predictor.dtype != torch.float32
        ):
            return net(x.contiguous(memory_format=torch.channels_last)).float()

    def segment_slice(z: int) -> np.ndarray:
        rows = np.abs(np.arange(z - context, z + context + 1))
        rows = np.where(rows > nz - 1, 2 * (nz - 1) - rows, rows)
        image = np.stack([np.asarray(volume[int(r)]) for r in rows])
        x = torch.from_numpy(apply_range(image, *grey))[None].to(predictor.device)
        logits = sliding_window_inference(
            x,
            roi_size=(512, 512),
            sw_batch_size=8,
            predictor=forward,
            overlap=0.25,
            mode="gaussian",
        )
        return (logits[0].argmax(0) + 1).to(torch.uint8).cpu().numpy()

    out = np.empty((z1 - z0, *volume.shape[1:]), np.uint8)
    with torch.inference_mode():
        if warm:
            segment_slice(z0)  # warm-up
        t0 = time.perf_counter()
        for z in range(z0, z1):
            out[z - z0] = segment_slice(z)
    return out, time.perf_counter() - t0


# A timing process of --busy-neighbour: napari_tomoseg first (it sets the OpenMP waiting before
# torch loads), then one segmentation of the sample per line read (threads chosen at its start, as
# the CLI and the widgets' jobs do), its seconds written back.
_TIMER = """
import sys, time
import napari_tomoseg
from napari_tomoseg.core.threads import configure_threads
from napari_tomoseg.core.model import bundled_model_path, load_model
from napari_tomoseg.core.phantom.composite import make_phantom
from napari_tomoseg.core.segment import InferenceConfig, Segmenter
threads = configure_threads(int(sys.argv[1]) if sys.argv[1] != "default" else None)
volume = make_phantom(seed=0).volume
segmenter = Segmenter(load_model(bundled_model_path()), InferenceConfig(device="cpu"))
segmenter.plan(volume[:8]).segment()
print(threads, flush=True)
for line in sys.stdin:
    t0 = time.perf_counter()
    configure_threads(int(sys.argv[1]) if sys.argv[1] != "default" else None)  # as each job does
    segmenter.plan(volume).segment()
    print(time.perf_counter() - t0, flush=True)
"""


def _spin(stop: Any) -> None:
    """The busy neighbour: a Python loop on one core until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def busy_neighbour(repeats: int) -> dict[str, Any]:
    """Segment the 128^3 sample idle and next to a busy process; medians of ``repeats`` runs."""
    import multiprocessing
    import os
    import statistics
    import subprocess

    from napari_tomoseg.core.threads import available_cpus

    cores = available_cpus()
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    configs = {
        "default": ("default", env),
        "all_cores": (str(cores), env),
        "libgomp_spin_default": ("default", {**env, "GOMP_SPINCOUNT": "300000"}),
    }
    timers: dict[str, Any] = {}
    threads: dict[str, int] = {}
    for name, (arg, cenv) in configs.items():
        timers[name] = subprocess.Popen(
            [sys.executable, "-c", _TIMER, arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=cenv,
        )
    for name, proc in timers.items():
        threads[name] = int(proc.stdout.readline())
    ctx = multiprocessing.get_context("spawn")
    times: dict[str, dict[str, list[float]]] = {n: {"idle": [], "busy": []} for n in configs}
    try:
        for rep in range(repeats):
            for load in ("idle", "busy"):
                stop, neighbour = ctx.Event(), None
                if load == "busy":
                    neighbour = ctx.Process(target=_spin, args=(stop,), daemon=True)
                    neighbour.start()
                    time.sleep(0.5)
                try:
                    for name, proc in timers.items():
                        proc.stdin.write("run\n")
                        proc.stdin.flush()
                        times[name][load].append(float(proc.stdout.readline()))
                finally:
                    if neighbour is not None:
                        stop.set()
                        neighbour.join()
            log(
                f"round {rep + 1}/{repeats}: "
                + ", ".join(
                    f"{n} {t['idle'][-1]:.2f}/{t['busy'][-1]:.2f} s" for n, t in times.items()
                )
            )
    finally:
        for proc in timers.values():
            proc.stdin.close()
            proc.wait()
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    return {
        "volume": [128, 128, 128],
        "cores": cores,
        "threads": threads,
        "openmp_waiting": {
            n: c[1].get("GOMP_SPINCOUNT", "napari_tomoseg's") for n, c in configs.items()
        },
        "repeats": repeats,
        "seconds": times,
        "median_seconds": med,
        "busy_over_idle": med["default"]["busy"] / med["default"]["idle"],
        "idle_default_over_idle_all_cores": med["default"]["idle"] / med["all_cores"]["idle"],
        "busy_over_idle_all_cores": med["all_cores"]["busy"] / med["all_cores"]["idle"],
        "busy_over_idle_libgomp_spin_default": (
            med["libgomp_spin_default"]["busy"] / med["libgomp_spin_default"]["idle"]
        ),
        "machine": machine(),
    }


def mean_jaccard(pred: np.ndarray, truth: np.ndarray, n: int) -> tuple[float, list[float]]:
    j = jaccard_per_phase(pred, truth, n)
    return float(np.nanmean(j)), [float(v) for v in j]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024, help="in-plane edge of the phantom")
    ap.add_argument("--size-3d", type=int, default=256, help="in-plane edge for the 3D timing")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--chunk", type=int, default=4, help="slices per alternation with MONAI")
    ap.add_argument("--skip", nargs="*", default=[], choices=["2d-3axes", "3d", "monai"])
    ap.add_argument(
        "--busy-neighbour",
        action="store_true",
        help="time the 128^3 sample idle and next to a busy process (see above)",
    )
    ap.add_argument("--repeats", type=int, default=5, help="timings per case (--busy-neighbour)")
    ap.add_argument(
        "--tta",
        action="store_true",
        help="test-time augmentation (8 network passes per tile; FLOPs counted 8x; no MONAI run)",
    )
    args = ap.parse_args()
    if args.busy_neighbour:
        emit(busy_neighbour(args.repeats))
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    log(f"phantom {args.slices} x {args.size}^2 ...")
    t0 = time.perf_counter()
    ph = phantom((args.slices, args.size, args.size))
    log(f"phantom made in {time.perf_counter() - t0:.1f} s")
    volume, truth = ph.volume, ph.labels
    model = load_model(bundled_model_path())
    n = len(model.phases)
    if args.tta:  # MONAI runs the bare network: no like-for-like comparison
        args.skip = [*args.skip, "monai"]
    segmenter = Segmenter(
        model, InferenceConfig(device=args.device, precision=args.precision, tta=args.tta)
    )
    predictor = segmenter.predictor
    assert isinstance(predictor, Predictor)
    vox = volume.size
    out: dict = {
        "shape": list(volume.shape),
        "device": str(segmenter.device),
        "precision": segmenter.precision_name,
        "tta": args.tta,
        "machine": machine(),
        "modes": {},
    }

    log("matmul peaks ...")
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16)
    peak = max(peak32, peak16)
    fpv = flops_per_voxel(predictor.network, (1, model.config.in_channels, 512, 512))
    fpv *= max(1, len(predictor.symmetries))  # one network pass per symmetry with --tta
    out.update(peak_fp32_flops=peak32, peak_bf16_flops=peak16, flops_per_voxel=fpv)

    # Ours and MONAI alternate on chunks of slices, so that a change in machine load (this CPU is
    # shared) hits both alike; the grey range is computed once, as Segmenter.plan does, and timed.
    t0 = time.perf_counter()
    # what Segmenter.plan does first: ring removal as the model asks (a lazy view; finding the axis
    # is timed here, each slice's correction inside ours), then the grey range
    prepared = model.normalization.prepare(volume)
    t_rings = time.perf_counter() - t0
    grey = model.normalization.volume_range(prepared)
    t_grey = time.perf_counter() - t0
    # The model's own slice mode (2D, or 2.5D with neighbouring slices as channels). Ours runs
    # block by block over the whole volume; after each block MONAI segments the same slices.
    mode = "2.5d" if model.config.in_channels > 1 else "2d"
    slices = segmenter.with_options(mode=mode, block=max(1, args.chunk))
    slices.plan(prepared[:8], grey_range=grey).segment()  # warm-up
    mlabels = np.empty(volume.shape, np.uint8)
    sec, msec = t_grey, 0.0
    t0 = time.perf_counter()
    gen = slices.plan(prepared, grey_range=grey).run()
    sec += time.perf_counter() - t0
    while True:
        t0 = time.perf_counter()
        try:
            event = next(gen)
        except StopIteration as stop:
            sec += time.perf_counter() - t0
            labels = stop.value.labels
            break
        sec += time.perf_counter() - t0
        z0, z1 = event.region[0].start, event.region[0].stop
        if "monai" not in args.skip:
            mlabels[z0:z1], ms = run_monai(prepared, z0, z1, predictor, grey, warm=z0 == 0)
            msec += ms
        log(f"slices {z0}..{z1}: ours {sec:.1f} s, MONAI {msec:.1f} s so far")
    peak32 = max(peak32, matmul_peak(torch.float32))
    peak = max(peak32, peak16)
    out.update(peak_fp32_flops=peak32)
    mv = vox / sec / 1e6
    jm, jp = mean_jaccard(labels, truth, n)
    out["slice_mode"] = mode
    out["ring_removal"] = {
        "applied": prepared is not volume,
        "find_axis_seconds": t_rings,
        "centre": getattr(prepared, "centre", None),
    }
    out["modes"][mode] = {
        "seconds": sec,
        "mvox_per_s": mv,
        "jaccard_mean": jm,
        "jaccard": jp,
        "fraction_of_peak": mv * 1e6 * fpv / peak,
    }
    out.update(mvox_per_s=mv, fraction_of_peak=mv * 1e6 * fpv / peak, jaccard_mean=jm)
    log(f"{mode}: {mv:.3f} Mvox/s, {100 * mv * 1e6 * fpv / peak:.1f} % of peak, Jaccard {jm:.4f}")
    if "monai" not in args.skip:
        mmv = vox / msec / 1e6
        mjm, mjp = mean_jaccard(mlabels, truth, n)
        out.update(
            monai_mvox_per_s=mmv,
            speedup_vs_monai=mv / mmv,
            monai_jaccard_mean=mjm,
            monai_jaccard=mjp,
            jaccard_delta_vs_monai=jm - mjm,
            agreement_with_monai=float((mlabels == labels).mean()),
        )
        log(f"MONAI: {mmv:.3f} Mvox/s, Jaccard {mjm:.4f}; ours is {mv / mmv:.2f}x faster")

    if "2d-3axes" not in args.skip:
        log("ours, 2d-3axes ...")
        labels3, sec3 = run_ours(volume, segmenter.with_options(mode="2d-3axes"))
        mv3 = vox / sec3 / 1e6
        jm3, jp3 = mean_jaccard(labels3, truth, n)
        out["modes"]["2d-3axes"] = {
            "seconds": sec3,
            "mvox_per_s": mv3,
            "jaccard_mean": jm3,
            "jaccard": jp3,
            "fraction_of_peak": 3 * mv3 * 1e6 * fpv / peak,
        }
        log(f"2d-3axes: {mv3:.3f} Mvox/s, Jaccard {jm3:.4f}")

    if "3d" not in args.skip:
        torch.manual_seed(0)
        net3 = ModularUNet(UNetConfig(ndim=3, base_filters=8)).eval()
        m3 = TomosegModel(
            net3, model.phases, defaults=InferenceDefaults(mode="3d", tile=64, overlap=16)
        )
        seg3 = Segmenter(
            m3,
            InferenceConfig(mode="3d", device=args.device, precision=args.precision, tta=args.tta),
        )
        s = args.size_3d
        v3 = np.ascontiguousarray(volume[:, :s, :s])
        log(f"random 3D net (F=8), 3d mode on {v3.shape} ...")
        _, sec3d = run_ours(v3, seg3)
        assert isinstance(seg3.predictor, Predictor)
        fpv3 = flops_per_voxel(seg3.predictor.network, (1, 1, 64, 64, 64))
        fpv3 *= max(1, len(seg3.predictor.symmetries))
        mv3d = v3.size / sec3d / 1e6
        out["modes"]["3d"] = {
            "shape": list(v3.shape),
            "seconds": sec3d,
            "mvox_per_s": mv3d,
            "flops_per_voxel": fpv3,
            "fraction_of_peak": mv3d * 1e6 * fpv3 / peak,
            "model": "random ModularUNet ndim=3 F=8, tile 64, overlap 16",
        }
        log(f"3d: {mv3d:.3f} Mvox/s")
    out["gpu_targets"] = "measured" if torch.cuda.is_available() else "not measured (no GPU)"
    emit(out)


if __name__ == "__main__":
    main()
