"""A 2048^3 volume in napari on a 24 GB machine: opened, browsed, segmented, annotated.

Run under a display (``xvfb-run -a python benchmarks/gui_scale.py``). It makes a 2048^3 uint8 zarr
volume (8 GiB as an array, about as much on disk: noise does not compress) holding a 32 x 256 x 256
synthetic composite tiled in all three directions (``--filled N`` writes only the first N slices and
leaves the rest at the matrix grey: quicker to make, but not a realistic volume). Then, in a
real ``napari.Viewer`` driven through the plugin's own widgets, with the peak RSS sampled throughout:

1. open it with the plugin's reader (dask-backed) and step through slices (ms per slice change);
2. create the annotations layer (a zarr store next to the volume) and paint a brush stroke;
3. segment with the bundled model: the ``prediction`` layer is a zarr store filled slab by slab; after
   ``--slabs`` slabs the run is stopped (the whole volume takes hours on 2 CPU cores; the time per slab
   gives the projection), and the prediction of a finished slice is copied into the annotations;
4. count the annotations (from the stored chunks only).

The last line printed is one JSON object.

    xvfb-run -a python benchmarks/gui_scale.py                # 2048^3
    xvfb-run -a python benchmarks/gui_scale.py --size 1024    # quicker
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
from _common import emit, log, machine  # noqa: E402


class RssSampler:
    """The process's resident memory, sampled every 50 ms in a thread, with the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def make_volume(path: Path, size: int, filled: int) -> None:
    import zarr

    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom

    tile = make_phantom(PhantomConfig(shape=(32, 256, 256)), seed=11).volume
    arr = zarr.create_array(
        store=str(path),
        shape=(size, size, size),
        chunks=(16, 512, 512),
        dtype=np.uint8,
        fill_value=int(np.median(tile)),
        dimension_names=("z", "y", "x"),
    )
    reps = -(-size // 256)
    slab = np.tile(tile, (1, reps, reps))[:, :size, :size]
    for z0 in range(0, min(size, filled or size), 32):
        n = min(32, size - z0)
        arr[z0 : z0 + n] = slab[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument(
        "--filled", type=int, default=0, help="slices holding the phantom (default: all)"
    )
    ap.add_argument("--slabs", type=int, default=3, help="slabs to segment before stopping")
    ap.add_argument("--folder", help="where to make the volume (default: a temporary folder)")
    args = ap.parse_args()

    folder = Path(args.folder or tempfile.mkdtemp(prefix="tomoseg-gui-scale-"))
    path = folder / "big.zarr"
    if not path.exists():
        log(f"making a {args.size}^3 zarr volume in {folder}")
        make_volume(path, args.size, args.filled)

    import napari
    from qtpy.QtWidgets import QApplication

    sampler = RssSampler()
    rss: dict[str, float] = {}
    gb = 1024**3
    app = QApplication.instance() or QApplication([])

    def pump(seconds: float = 0.0) -> None:
        end = time.perf_counter() + seconds
        while True:
            app.processEvents()
            if time.perf_counter() >= end:
                return
            time.sleep(0.01)

    viewer = napari.Viewer(show=True)
    pump(0.5)
    rss["viewer"] = RssSampler.now() / gb

    t0 = time.perf_counter()
    [image] = viewer.open(str(path), plugin="napari-tomoseg")
    pump(0.2)
    open_seconds = time.perf_counter() - t0
    rss["opened"] = RssSampler.now() / gb
    log(f"opened {image.data.shape} as {type(image.data).__name__} in {open_seconds:.2f} s")

    steps = []
    for z in np.linspace(0, args.size - 1, 12).astype(int):
        t = time.perf_counter()
        viewer.dims.set_current_step(0, int(z))
        pump()
        steps.append((time.perf_counter() - t) * 1000)
    rss["browsed"] = RssSampler.now() / gb

    from napari_tomoseg._napari.annotate import AnnotateWidget
    from napari_tomoseg._napari.segment import PREDICTION, SegmentWidget

    annotate = AnnotateWidget(viewer)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="Annotate")
    viewer.window.add_dock_widget(segment, name="Segment")
    viewer.dims.set_current_step(0, 4)
    ann = annotate.ensure_layer()
    annotate.select_phase(2)
    ann.brush_size = 40
    t = time.perf_counter()
    for x in range(200, 1200, 20):
        ann.paint((4, 600, x), 2)
    paint_ms = (time.perf_counter() - t) * 1000 / 50
    pump(0.2)
    rss["annotations_layer"] = RssSampler.now() / gb
    log(f"annotations: {type(ann.data).__name__}, a brush dab in {paint_ms:.1f} ms")

    segment.mode.value = "2d"
    slab_times: list[float] = []
    seen: list[int] = []
    assert segment.run()
    t_run = time.perf_counter()
    segment.runner.worker.yielded.connect(
        lambda ev: (seen.append(ev.region[0].stop), slab_times.append(time.perf_counter()))
    )
    while len(seen) < args.slabs and segment.runner.running:
        pump(0.1)
    pred = viewer.layers[PREDICTION]
    backend = f"{type(pred.data).__module__}.{type(pred.data).__name__}"
    viewer.dims.set_current_step(0, 3)
    pump(0.6)
    copied = annotate.copy_prediction_slice()
    rss["segmenting"] = RssSampler.now() / gb
    segment.controls.stop_button.native.click()
    while segment.runner.running:
        pump(0.1)
    first_slab = slab_times[0] - t_run
    per_slab = float(np.median(np.diff(slab_times))) if len(slab_times) > 1 else first_slab
    depth = seen[0] if seen else 1
    projected_h = per_slab * args.size / depth / 3600

    annotate.last_counts = None
    annotate.update_counts()
    t = time.perf_counter()
    while getattr(annotate, "last_counts", None) is None:
        pump(0.05)
    count_seconds = time.perf_counter() - t
    store = Path(annotate.last_saved) if annotate.last_saved else None
    store_mb = (
        sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 1e6
        if store is not None and store.exists()
        else float("nan")
    )
    viewer.close()
    peak = sampler.stop() / gb
    log(f"peak RSS {peak:.2f} GB; {per_slab:.1f} s per slab of {depth} slices")
    if not args.folder:
        shutil.rmtree(folder, ignore_errors=True)

    emit(
        {
            "machine": machine(),
            "shape": [args.size] * 3,
            "volume_gb_as_array": args.size**3 / gb,
            "open_seconds": open_seconds,
            "image_backend": type(image.data).__module__.split(".")[0],
            "slice_change_ms": {"median": float(np.median(steps)), "max": float(np.max(steps))},
            "annotations_backend": f"{type(ann.data).__module__}.{type(ann.data).__name__}",
            "paint_ms_per_dab": paint_ms,
            "prediction_backend": backend,
            "slabs_segmented": len(seen),
            "slab_depth": depth,
            "seconds_per_slab": per_slab,
            "projected_hours_whole_volume": projected_h,
            "copied_prediction_voxels": copied,
            "annotation_counts": annotate.last_counts,
            "count_seconds": count_seconds,
            "annotation_store_mb": store_mb,
            "rss_gb": rss,
            "peak_rss_gb": peak,
        }
    )


if __name__ == "__main__":
    main()
