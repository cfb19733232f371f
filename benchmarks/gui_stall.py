"""How long does the Qt event loop stall while the widgets segment and fine-tune? (target < 100 ms)

A real napari viewer (under Xvfb when there is no display) holds a synthetic composite; a QTimer probe
fires every 10 ms and records the gap between ticks while (1) the Segment widget segments the volume
and (2) the Fine-tune widget trains on three annotated slices. Meanwhile a simulated user scrolls
through the slices every 100 ms, so redraws of the growing prediction are part of what is measured.

    python benchmarks/gui_stall.py [--shape 32 256 256] [--finetune-seconds 20] [--threads N]

Prints progress to stderr and, as the last stdout line, one JSON object:
``{"segment_max_stall_ms": ..., "finetune_max_stall_ms": ..., "idle_max_stall_ms": ..., ...}``.
A stall is a probe gap minus the 10 ms interval. The probe starts once Run's click handler has
returned: ``segment_click_ms`` / ``finetune_click_ms`` is that handler (napari adding the prediction
layer, before any computation), reported apart. ``idle_*`` is the same viewer scrolled with no job
running: on a loaded machine with software OpenGL the event loop stalls without any job, so judge the
job numbers against it. ``--trace-stalls`` prints the Qt thread's stack during each stall over 150 ms
(to see whether our code or rendering holds it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

# benchmarks/dask.py would shadow the dask package (napari imports it): drop this script's folder
# from the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

PROBE_MS = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Probe:
    """Record the gaps between ticks of a 10 ms QTimer (the event loop's responsiveness)."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(PROBE_MS)
        self.timer.timeout.connect(self._tick)
        self.gaps: list[float] = []
        self._last = 0.0

    def watch(self) -> None:
        """Print the Qt thread's stack while it stalls (to find what blocks it)."""
        import threading
        import traceback

        main = threading.main_thread().ident

        def watchdog() -> None:
            reported: tuple[float, int] = (0.0, 0)
            while True:
                time.sleep(0.05)
                last = self._last
                stalled = time.perf_counter() - last
                # report at 150 ms, then every 500 ms of the same stall
                nth = 0 if stalled < 0.15 else 1 + int((stalled - 0.15) / 0.5)
                try:
                    active = self.timer.isActive()
                except RuntimeError:  # the timer is gone: the benchmark is over
                    return
                if active and nth and reported != (last, nth):
                    reported = (last, nth)
                    frame = sys._current_frames().get(main)
                    stack = "".join(traceback.format_stack(frame, limit=12)) if frame else "?"
                    log(f"Qt thread stalled for {stalled * 1000:.0f} ms, in:\n{stack}")

        threading.Thread(target=watchdog, daemon=True).start()

    def start(self) -> None:
        self.gaps = []
        self._last = time.perf_counter()
        self.timer.start()

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now - self._last) * 1000.0)
        self._last = now

    def stop(self) -> dict[str, float]:
        self.timer.stop()
        stalls = np.maximum(np.asarray(self.gaps) - PROBE_MS, 0.0) if self.gaps else np.zeros(1)
        return {
            "max_stall_ms": round(float(stalls.max()), 1),
            "p99_stall_ms": round(float(np.percentile(stalls, 99)), 1),
            "ticks": len(self.gaps),
            "stalls_over_100ms": int((stalls > 100).sum()),
        }


def _run_until_idle(app: Any, runner: Any, scroll: Any, timeout: float) -> float:
    """Run the Qt event loop (not a busy loop) until the runner's job has finished."""
    from qtpy.QtCore import QEventLoop, QTimer

    t0 = time.perf_counter()
    loop = QEventLoop()
    check = QTimer()
    check.setInterval(50)

    def poll() -> None:
        if (runner.worker_finished and not runner.running) or time.perf_counter() - t0 > timeout:
            loop.quit()

    check.timeout.connect(poll)
    check.start()
    scroll.start()
    loop.exec()
    scroll.stop()
    check.stop()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 256, 256))
    parser.add_argument("--finetune-seconds", type=float, default=20.0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--idle-seconds", type=float, default=5.0, help="baseline duration")
    parser.add_argument(
        "--trace-stalls",
        action="store_true",
        help="print the Qt thread's stack (stderr) whenever it has not ticked for 150 ms",
    )
    args = parser.parse_args(argv)

    display = None
    if not os.environ.get("DISPLAY"):
        from pyvirtualdisplay import Display

        display = Display(visible=False, size=(1600, 1000))
        display.start()
        log("started Xvfb")
    try:
        result = _measure(args)
    finally:
        if display is not None:
            display.stop()
    print(json.dumps(result))
    return 0


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    import napari
    import torch
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_tomoseg._napari.finetune import FinetuneWidget
    from napari_tomoseg._napari.jobs import JobState
    from napari_tomoseg._napari.layers import apply_phases
    from napari_tomoseg._napari.segment import SegmentWidget
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom
    from napari_tomoseg.core.phases import COMPOSITE_PHASES

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(args.shape)
    log(f"phantom {shape}")
    ph = make_phantom(PhantomConfig(shape=shape), seed=5)
    viewer = napari.Viewer(title="gui stall benchmark")
    app = QApplication.instance()
    viewer.add_image(ph.volume, name="composite")
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment")
    ft = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(ft, name="Fine-tune", tabify=True)
    for _ in range(100):  # let the window settle (first paint, torch import for device detection)
        app.processEvents()
        time.sleep(0.02)

    step = {"z": 0}

    def scroll_once() -> None:  # a user flicking through slices
        step["z"] = (step["z"] + 1) % shape[0]
        viewer.dims.set_current_step(0, step["z"])

    scroll = QTimer()
    scroll.setInterval(100)
    scroll.timeout.connect(scroll_once)
    probe = Probe()
    if args.trace_stalls:
        probe.watch()

    # Baseline: the same scrolling with no job running. On a loaded machine (software OpenGL, other
    # processes) the event loop stalls without any job; compare the job numbers with this one.
    from qtpy.QtCore import QEventLoop

    log("baseline: scrolling, no job")
    probe.start()
    scroll.start()
    idle = QEventLoop()
    QTimer.singleShot(int(args.idle_seconds * 1000), idle.quit)
    idle.exec()
    scroll.stop()
    idle_stats = probe.stop()
    log(f"idle: {idle_stats}")

    log("segmenting")
    # The click itself (napari creating the prediction layer, before any computation) is timed
    # apart; the probe then watches the event loop while the job computes.
    t_click = time.perf_counter()
    assert seg.run()
    seg_click_ms = (time.perf_counter() - t_click) * 1000
    probe.start()
    seg_seconds = _run_until_idle(app, seg.runner, scroll, args.timeout)
    seg_stats = probe.stop()
    if seg.runner.state is not JobState.DONE:
        raise SystemExit(f"segmentation ended {seg.runner.state}")
    log(f"segment: {seg_seconds:.1f} s, {seg_stats}")

    annotations = np.zeros(shape, np.uint8)
    for z in np.linspace(2, shape[0] - 3, 3).round().astype(int):
        annotations[z] = ph.labels[z]
    layer = viewer.add_labels(annotations, name="annotations")
    apply_phases(layer, COMPOSITE_PHASES)
    ft.annotations.select("annotations")
    ft.budget_kind.value = "seconds"
    ft.budget.value = int(args.finetune_seconds)
    ft.validate_every.value = 10

    log("fine-tuning")
    t_click = time.perf_counter()
    assert ft.run()
    ft_click_ms = (time.perf_counter() - t_click) * 1000
    probe.start()
    # planning job first, then the training job: wait for a result
    t0 = time.perf_counter()
    while ft.result is None and time.perf_counter() - t0 < args.timeout:
        _run_until_idle(app, ft.runner, scroll, args.timeout)
        if ft.runner.state is JobState.FAILED:
            raise SystemExit(f"fine-tuning failed: {ft.runner.error}")
    ft_seconds = time.perf_counter() - t0
    ft_stats = probe.stop()
    log(f"fine-tune: {ft_seconds:.1f} s, {ft.result.steps} steps, {ft_stats}")
    viewer.close()
    return {
        "idle_max_stall_ms": idle_stats["max_stall_ms"],
        "idle_p99_stall_ms": idle_stats["p99_stall_ms"],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "shape": list(shape),
        "torch_threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "segment_seconds": round(seg_seconds, 1),
        "segment_click_ms": round(seg_click_ms, 1),
        "segment_max_stall_ms": seg_stats["max_stall_ms"],
        "segment_p99_stall_ms": seg_stats["p99_stall_ms"],
        "segment_stalls_over_100ms": seg_stats["stalls_over_100ms"],
        "finetune_seconds": round(ft_seconds, 1),
        "finetune_click_ms": round(ft_click_ms, 1),
        "finetune_steps": ft.result.steps,
        "finetune_max_stall_ms": ft_stats["max_stall_ms"],
        "finetune_p99_stall_ms": ft_stats["p99_stall_ms"],
        "finetune_stalls_over_100ms": ft_stats["stalls_over_100ms"],
    }


if __name__ == "__main__":
    raise SystemExit(main())
