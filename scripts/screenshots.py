"""Screenshots of the real dock widgets for the user guide, taken in a real napari viewer.

Run under a virtual display (the docs must show what the code does today)::

    xvfb-run -a python scripts/screenshots.py            # writes docs/images/widget-*.png

It opens the synthetic sample (File > Open Sample), docks each widget of the plugin in turn through
napari's plugin menu machinery, drives it as a user would (segment, copy a slice into annotations,
fine-tune a few seconds, evaluate against the ground truth, find ring-artifact blobs, export), and
saves a screenshot of the whole window for each. PNGs are palette-quantised to stay small.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("screenshots")

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-tomoseg"
WINDOW = (1500, 950)
MAX_BYTES = 300_000


def wait(app: Any, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the Qt event loop until ``done()`` (the viewer stays live while workers run)."""
    t0 = time.perf_counter()
    while not done():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")
    for _ in range(20):  # let the result handlers and the canvas catch up
        app.processEvents()
        time.sleep(0.02)


def job_done(widget: Any) -> Callable[[], bool]:
    return lambda: not widget.runner.running


def save(viewer: Any, app: Any, path: Path) -> None:
    from PIL import Image

    for _ in range(10):
        app.processEvents()
        time.sleep(0.05)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    img = Image.open(path).convert("RGB")
    colours = 256
    while True:
        img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= MAX_BYTES or colours <= 32:
            break
        colours //= 2
    log.info("wrote %s (%d KB)", path, path.stat().st_size // 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--finetune-seconds", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    # Settings and annotation autosaves go to a scratch folder: the screenshots never depend on,
    # or leave anything in, the user's own napari-tomoseg state.
    scratch = tempfile.TemporaryDirectory(prefix="tomoseg-screenshots-")
    os.environ["NAPARI_TOMOSEG_CONFIG_DIR"] = str(Path(scratch.name) / "config")
    os.environ["NAPARI_TOMOSEG_AUTOSAVE_DIR"] = str(Path(scratch.name) / "autosave")

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-tomoseg")
    app = QApplication.instance()
    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample(PLUGIN, "composite")
    image = viewer.layers["composite"]
    viewer.dims.set_current_step(0, 64)
    shots: list[Path] = []

    def dock(name: str) -> tuple[Any, Any]:
        d, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        app.processEvents()
        return d, w

    def undock(d: Any) -> None:
        viewer.window.remove_dock_widget(d)
        app.processEvents()

    # Segment -----------------------------------------------------------------------------
    d, seg = dock("Segment")
    seg.image.select(image)
    assert seg.run(), "the segment widget refused to run"
    wait(app, job_done(seg), 900, "segmentation")
    out = args.out / "widget-segment.png"
    save(viewer, app, out)
    shots.append(out)
    undock(d)

    # Annotate ----------------------------------------------------------------------------
    d, ann = dock("Annotate")
    for z in (40, 64, 90):
        viewer.dims.set_current_step(0, z)
        ann.copy_prediction_slice()
        wait(app, lambda: not ann.runner.running, 60, "copying the prediction")
    viewer.dims.set_current_step(0, 64)
    viewer.layers["prediction"].visible = False
    out = args.out / "widget-annotate.png"
    save(viewer, app, out)
    shots.append(out)
    undock(d)

    # Fine-tune (part of the plugin once its widget exists) ----------------------------------
    try:
        d, ft = dock("Fine-tune")
    except Exception as err:  # the widget may not be installed in this checkout yet
        log.warning("no Fine-tune widget (%s); skipping its screenshot", err)
    else:
        ft.image.select(image)
        ft.annotations.select("annotations")
        ft.budget_kind.value = "seconds"
        ft.budget.value = int(args.finetune_seconds)
        assert ft.run(), "the fine-tune widget refused to run"
        # Planning and training are two jobs: wait for the result, not for the first job.
        wait(app, lambda: ft.result is not None and not ft.runner.running, 900, "fine-tuning")
        out = args.out / "widget-finetune.png"
        save(viewer, app, out)
        shots.append(out)
        undock(d)

    # Evaluate ----------------------------------------------------------------------------
    viewer.layers["prediction"].visible = True
    d, ev = dock("Evaluate")
    ev.prediction.select("prediction")
    ev.reference.select("ground truth")
    ev.image.select(image)
    ev.run()
    wait(app, job_done(ev), 300, "evaluation")
    viewer.layers["prediction"].visible = False
    out = args.out / "widget-evaluate.png"
    save(viewer, app, out)
    shots.append(out)
    undock(d)
    viewer.layers["errors"].visible = False

    # Clean-up ----------------------------------------------------------------------------
    viewer.layers["prediction"].visible = True
    d, cl = dock("Clean up artifacts")
    cl.labels_layer.select("prediction")
    cl.phase.value = "pore"
    cl.min_area.value = 20
    cl.min_aspect.value = 2
    cl.analyse()
    wait(app, job_done(cl), 300, "blob analysis")
    if cl.blobs is not None and len(cl.blobs) and cl.selection.any():
        z = int(cl.blobs.slice_index[np.flatnonzero(cl.selection)[0]])
        viewer.dims.set_current_step(0, z)
    out = args.out / "widget-cleanup.png"
    save(viewer, app, out)
    shots.append(out)
    undock(d)
    if "blob selection" in viewer.layers:
        viewer.layers.remove("blob selection")

    # Export ------------------------------------------------------------------------------
    d, ex = dock("Export")
    ex.labels_layer.select("prediction")
    with tempfile.TemporaryDirectory() as tmp:
        ex.path.value = str(Path(tmp) / "prediction.tif")
        ex.export()
        wait(app, job_done(ex), 300, "export")
        out = args.out / "widget-export.png"
        save(viewer, app, out)
        shots.append(out)
    undock(d)

    viewer.close()
    scratch.cleanup()
    too_big = [p for p in shots if p.stat().st_size > MAX_BYTES]
    print("\n".join(str(p) for p in shots))
    if too_big:
        log.error("larger than %d bytes: %s", MAX_BYTES, too_big)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
