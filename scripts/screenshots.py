"""Screenshots of the real dock widgets for the user guide, taken in a real napari viewer.

Run under a virtual display (the docs must show what the code does today)::

    xvfb-run -a -s "-screen 0 1920x1080x24" python scripts/screenshots.py   # docs/images/*.png

It starts from a clean state (napari's and napari-tomoseg's settings and the annotation autosaves in a
scratch folder), opens the synthetic sample (File > Open Sample), docks every widget of the plugin
through napari's plugin menu machinery (they tab together) and drives them as a user would: segment,
copy the prediction into three slices and paint corrections, fine-tune a few seconds, segment again,
evaluate on the held-out annotations, measure, find ring-artifact blobs, export. Before each shot
the widget's tab is brought to the front and napari's notifications are closed; no temporary path
is visible in the window. Then it opens the real glass-fibre scan of qim3d with the plugin's reader
and segments it. It writes one screenshot of the whole window per widget (``widget-*.png``) and
``loop.png``, the loop in six captioned panels cut from those windows. PNGs are palette-quantised to
stay small.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("screenshots")

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-tomoseg"
WINDOW = (1500, 950)
MAX_BYTES = 300_000
LOOP_MAX_BYTES = 400_000
REAL_SCAN = Path("/tmp/qim3d/qim3d/examples/fibers_150x150x150.tif")
#: Where the Export shot says it writes (the export itself goes to a scratch folder).
SHOWN_EXPORT = "~/scans/prediction.tif"
#: The loop figure: panels of this size (caption included), three to a row.
PANEL = (600, 500)
CAPTION_H = 46
BACKGROUND = (38, 41, 48)  # napari's dark theme
CAPTION_BG = (58, 62, 72)


# Qt ------------------------------------------------------------------------------------------
def pump(app: Any, seconds: float = 0.3) -> None:
    """Run the Qt event loop for ``seconds``."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def wait(app: Any, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Run the Qt event loop until ``done()`` (the viewer stays live while workers run)."""
    t0 = time.perf_counter()
    while not done():
        app.processEvents()
        time.sleep(0.02)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{what} did not finish within {timeout:.0f} s")
    log.info("%s: %.1f s", what, time.perf_counter() - t0)
    pump(app, 0.4)  # let the result handlers and the canvas catch up


def job_done(widget: Any) -> Callable[[], bool]:
    return lambda: not widget.runner.running


def close_notifications(app: Any) -> None:
    """Close napari's notification toasts (under Xvfb the window is never 'active', so napari never
    starts their dismiss timers: they would stay on every later shot)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    pump(app, 0.3)  # notifications from workers arrive through the event loop
    for _ in range(3):
        found = {id(n): n for n in NapariQtNotification._instances}
        for w in app.allWidgets():
            if isinstance(w, NapariQtNotification) and w.isVisible():
                found[id(w)] = w
        if not found:
            return
        for n in found.values():
            try:
                n.close()
            except RuntimeError:  # deleted meanwhile
                pass
        pump(app, 0.2)


def visible_texts(window: Any) -> list[str]:
    """The text of every visible label, line edit, combo box and button of ``window``."""
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLabel, QLineEdit

    out = []
    for kind, get in (
        (QLabel, lambda w: w.text()),
        (QLineEdit, lambda w: w.text()),
        (QComboBox, lambda w: w.currentText()),
        (QAbstractButton, lambda w: w.text()),
    ):
        for w in window.findChildren(kind):
            if w.isVisibleTo(window):
                out.append(str(get(w)))
    return out


@dataclass
class Shot:
    """A full-window screenshot and the window geometry it was taken with."""

    pixels: Any  # (H, W, 3) uint8
    window: Any  # the QMainWindow

    def crop(self, *widgets: Any, pad: int = 4) -> Any:
        """The part of the shot covering ``widgets`` (their bounding box), as a PIL image."""
        from PIL import Image
        from qtpy.QtCore import QPoint

        h, w = self.pixels.shape[:2]
        sx = w / max(1, self.window.width())
        sy = h / max(1, self.window.height())
        x0 = y0 = 10**9
        x1 = y1 = -(10**9)
        for widget in widgets:
            native = getattr(widget, "native", widget)
            p = native.mapTo(self.window, QPoint(0, 0))
            x0, y0 = min(x0, p.x()), min(y0, p.y())
            x1, y1 = max(x1, p.x() + native.width()), max(y1, p.y() + native.height())
        box = (
            max(0, int((x0 - pad) * sx)),
            max(0, int((y0 - pad) * sy)),
            min(w, int((x1 + pad) * sx)),
            min(h, int((y1 + pad) * sy)),
        )
        return Image.fromarray(self.pixels).crop(box)

    def canvas(self, viewer: Any, fraction: float = 1.0) -> Any:
        """The centre square of the viewer's canvas (``fraction`` of its shorter side)."""
        native = viewer.window._qt_viewer.canvas.native
        img = self.crop(native, pad=0)
        side = int(min(img.size) * fraction)
        cx, cy = img.size[0] // 2, img.size[1] // 2
        return img.crop((cx - side // 2, cy - side // 2, cx + side // 2, cy + side // 2))


def quantise(img: Any, path: Path, max_bytes: int) -> None:
    """Save ``img`` as a palette PNG, with fewer colours until it is at most ``max_bytes``."""
    from PIL import Image

    img = img.convert("RGB")
    colours = 256
    while True:
        img.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= max_bytes or colours <= 32:
            break
        colours //= 2
    log.info("wrote %s (%d KB, %d colours)", path, path.stat().st_size // 1024, colours)


# the loop figure -----------------------------------------------------------------------------
def _font(size: int, bold: bool = False) -> Any:
    from PIL import ImageFont

    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in ("/usr/share/fonts/truetype/dejavu", ""):
        try:
            return ImageFont.truetype(str(Path(folder) / name) if folder else name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def panel(number: int, caption: str, parts: Sequence[Any]) -> Any:
    """A loop panel: ``number`` and ``caption`` over ``parts`` (PIL images) stacked vertically,
    scaled down together to fit (never up) and centred."""
    from PIL import Image, ImageDraw

    w, h = PANEL
    body_w, body_h = w - 16, h - CAPTION_H - 12
    gap = 6
    total_h = sum(p.size[1] for p in parts) + gap * (len(parts) - 1)
    widest = max(p.size[0] for p in parts)
    scale = min(1.0, body_w / widest, body_h / total_h)
    out = Image.new("RGB", (w, h), BACKGROUND)
    draw = ImageDraw.Draw(out)
    draw.rectangle((0, 0, w, CAPTION_H), fill=CAPTION_BG)
    r = CAPTION_H // 2 - 8
    cx, cy = 14 + r, CAPTION_H // 2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(80, 120, 230))
    draw.text((cx, cy), str(number), font=_font(20, bold=True), fill="white", anchor="mm")
    draw.text((cx + r + 12, cy), caption, font=_font(19, bold=True), fill="white", anchor="lm")
    y = CAPTION_H + 6 + int((body_h - total_h * scale) / 2)
    for p in parts:
        size = (max(1, round(p.size[0] * scale)), max(1, round(p.size[1] * scale)))
        q = p.resize(size, Image.Resampling.LANCZOS) if scale < 1 else p
        out.paste(q, ((w - size[0]) // 2, y))
        y += size[1] + int(gap * scale)
    return out


def loop_figure(panels: Sequence[Any], columns: int = 3) -> Any:
    from PIL import Image

    rows = (len(panels) + columns - 1) // columns
    w, h = PANEL
    gap = 6
    out = Image.new(
        "RGB", (columns * w + (columns - 1) * gap, rows * h + (rows - 1) * gap), (0, 0, 0)
    )
    for i, p in enumerate(panels):
        out.paste(p, ((i % columns) * (w + gap), (i // columns) * (h + gap)))
    return out


# strokes -------------------------------------------------------------------------------------
def paint_corrections(layer: Any, truth: Any, z: int, radius: int = 3) -> int:
    """Paint, as a brush of ``radius`` would, the true phase over the mistakes of the copied slice
    ``z`` of ``layer`` (and along two strokes across it); returns the voxels changed."""
    import numpy as np
    from scipy import ndimage

    truth_z = np.asarray(truth[z])
    ann = np.asarray(layer.data[z])
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = yy**2 + xx**2 <= radius**2
    wrong = (ann > 0) & (ann != truth_z)
    strokes = ndimage.binary_dilation(wrong, structure=disk)
    # Two brush strokes where a user would check the boundaries: an arc and a line.
    h, w = truth_z.shape
    t = np.linspace(0, 1, 200)
    path = np.zeros_like(strokes)
    for ys, xs in (
        (h * (0.30 + 0.15 * np.sin(3 * t)), w * (0.15 + 0.35 * t)),
        (h * (0.65 + 0.2 * t), w * (0.60 + 0.25 * np.cos(2 * t))),
    ):
        path[np.clip(ys.astype(int), 0, h - 1), np.clip(xs.astype(int), 0, w - 1)] = True
    strokes |= ndimage.binary_dilation(path, structure=disk)
    change = strokes & (truth_z > 0) & (ann != truth_z)
    ys, xs = np.nonzero(change)
    if len(ys):
        zs = np.full(ys.shape, z, dtype=np.intp)
        layer.data_setitem((zs, ys, xs), truth_z[change])  # as the brush does (undoable)
    layer.refresh()
    return int(change.sum())


# main ----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--finetune-seconds", type=int, default=30)
    parser.add_argument("--real-scan", type=Path, default=REAL_SCAN)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    # napari's settings, napari-tomoseg's settings and the annotation autosaves go to a scratch
    # folder: the screenshots never depend on, or leave anything in, the user's own state.
    scratch = tempfile.TemporaryDirectory(prefix="tomoseg-screenshots-")
    scratch_dir = Path(scratch.name)
    os.environ["NAPARI_CONFIG"] = str(scratch_dir / "napari" / "settings.yaml")
    os.environ["NAPARI_TOMOSEG_CONFIG_DIR"] = str(scratch_dir / "config")
    os.environ["NAPARI_TOMOSEG_AUTOSAVE_DIR"] = str(scratch_dir / "autosave")

    import napari
    import numpy as np
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QApplication

    messages: list[str] = []
    notification_manager.notification_ready.connect(
        lambda n: messages.append(f"{n.severity}: {n.message}")
    )
    hidden = (str(scratch_dir), tempfile.gettempdir() + os.sep)
    shots: list[Path] = []
    panels: list[Any] = []

    def open_viewer() -> tuple[Any, Any]:
        viewer = napari.Viewer(title="napari-tomoseg")
        app = QApplication.instance()
        viewer.window._qt_window.resize(*WINDOW)
        pump(app, 0.5)
        return viewer, app

    viewer, app = open_viewer()
    window = viewer.window._qt_window

    def dock(name: str) -> tuple[Any, Any]:
        """Open a widget as the Plugins menu does; it joins the tab group, in front."""
        d, w = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        pump(app, 0.5)
        return d, w

    def shoot(name: str | None, front: Any) -> Shot:
        """Bring the dock ``front`` to the front, clear the notifications, check that no temporary
        path shows, take the window; written to ``<out>/<name>`` when ``name`` is given."""
        if window.size().width() != WINDOW[0] or window.size().height() != WINDOW[1]:
            window.resize(*WINDOW)
        front.show()
        front.raise_()
        pump(app, 0.5)
        close_notifications(app)
        pump(app, 0.3)
        leaks = [t for t in visible_texts(window) if any(h in t for h in hidden)]
        if leaks:
            raise RuntimeError(f"a temporary path shows in the window: {leaks}")
        if (window.width(), window.height()) != WINDOW:
            log.warning("window is %dx%d, not %dx%d", window.width(), window.height(), *WINDOW)
        pixels = viewer.screenshot(canvas_only=False, flash=False)
        shot = Shot(np.ascontiguousarray(pixels[..., :3]), window)
        if name is not None:
            from PIL import Image

            out = args.out / name
            quantise(Image.fromarray(shot.pixels), out, MAX_BYTES)
            shots.append(out)
        return shot

    viewer.open_sample(PLUGIN, "composite")
    image = viewer.layers["composite"]
    truth = viewer.layers["ground truth"]
    truth.visible = False
    viewer.dims.set_current_step(0, 64)

    # 1 Segment ---------------------------------------------------------------------------------
    seg_dock, seg = dock("Segment")
    seg.image.select(image)
    wait(app, lambda: seg.devices_found.value != "looking…", 120, "looking for devices")
    assert seg.run_preview(), "the segment widget refused to preview"
    wait(app, job_done(seg), 600, "preview")
    assert seg.run(), "the segment widget refused to run"
    wait(app, job_done(seg), 900, "segmentation")
    seg.advanced.expanded = True  # the options the user guide mentions
    viewer.layers.selection.active = viewer.layers["prediction"]
    shot = shoot("widget-segment.png", seg_dock)
    panels.append(
        panel(
            1,
            "Segment with the bundled model",
            [shot.canvas(viewer, 0.6), shot.crop(seg.model)],
        )
    )
    seg.advanced.expanded = False

    # 2 Annotate: copy the prediction into three slices, paint corrections on one ---------------
    ann_dock, ann = dock("Annotate")
    ann.image.select(image)
    for z in (40, 90, 64):
        viewer.dims.set_current_step(0, z)
        assert ann.copy_prediction_slice() > 0, f"nothing copied into slice {z}"
    painted = paint_corrections(ann.layer, truth.data, 64)
    log.info("painted %d voxels on slice 64", painted)
    ann.select_phase(3)  # the pore phase under the brush, as after a click in the table
    ann.layer.brush_size = 6
    viewer.layers["prediction"].visible = False
    ann.update_counts()
    pump(app, 2.0)  # the counts come from a worker; the autosave runs after a pause in painting
    wait(app, lambda: not ann._saver.running, 60, "autosave")
    shot = shoot("widget-annotate.png", ann_dock)
    panels.append(
        panel(2, "Correct a few slices", [shot.canvas(viewer, 0.6), shot.crop(ann.counts)])
    )

    # 3 Fine-tune -------------------------------------------------------------------------------
    ft_dock, ft = dock("Fine-tune")
    ft.image.select(image)
    ft.annotations.select("annotations")
    ft.budget_kind.value = "seconds"
    ft.budget.value = int(args.finetune_seconds)
    assert ft.run(), "the fine-tune widget refused to run"
    # Planning and training are two jobs: wait for the result, not for the first job.
    wait(
        app,
        lambda: ft.result is not None and not ft.runner.running,
        900,
        "fine-tuning",
    )
    ann.layer.mode = "pan_zoom"
    shot = shoot("widget-finetune.png", ft_dock)
    panels.append(
        panel(3, "Fine-tune: held-out Jaccard before/after", [shot.crop(ft.plot, ft.summary)])
    )

    # 4 Segment again with the fine-tuned model -------------------------------------------------
    assert ft.run_segment_again(), "segment again refused"
    pump(app, 0.5)
    wait(app, job_done(seg), 900, "segmenting again")
    viewer.layers["prediction"].visible = True
    ann.layer.visible = False
    viewer.layers.selection.active = viewer.layers["prediction"]
    shot = shoot(None, seg_dock)
    panels.append(
        panel(
            4,
            "Segment again with the fine-tuned model",
            [shot.canvas(viewer, 0.6), shot.crop(seg.model)],
        )
    )

    # 5 Evaluate on the held-out annotations ----------------------------------------------------
    ev_dock, ev = dock("Evaluate")
    ev.prediction.select("prediction")
    ev.reference.select("annotations")
    ev.image.select(image)
    assert ev.held_out_check.value, "the evaluation is not restricted to the held-out voxels"
    assert ev.run(), "the evaluate widget refused to run"
    wait(app, job_done(ev), 300, "evaluation")
    found = ev.held_out()
    if found is not None and found.slices:
        viewer.dims.set_current_step(0, int(found.slices[len(found.slices) // 2]))
    viewer.layers["prediction"].visible = False
    shot = shoot("widget-evaluate.png", ev_dock)
    panels.append(panel(5, "Evaluate on held-out annotations", [shot.crop(ev.summary, ev.table)]))
    viewer.layers["errors"].visible = False
    viewer.dims.set_current_step(0, 64)

    # 6 Measure ---------------------------------------------------------------------------------
    viewer.layers["prediction"].visible = True
    ms_dock, ms = dock("Measure")
    ms.labels_layer.select("prediction")
    ms.image_layer.select(image)
    if not ms.phases_select.value:
        # napari resets a magicgui Select's choices (reset_choices) when it docks the widget or a
        # layer is added, and the phase list has none of its own: re-read them as a new layer
        # choice would.
        log.warning("the Measure widget lists no phase; reading them from the layer again")
        ms._fill_phases()
    viewer.layers.selection.active = viewer.layers["prediction"]
    assert ms.run(), "the measure widget refused to run"
    wait(app, job_done(ms), 600, "measuring")
    shot = shoot("widget-measure.png", ms_dock)
    panels.append(
        panel(6, "Measure fractions, sizes, orientation", [shot.crop(ms.table, ms.plots)])
    )

    # Clean-up ----------------------------------------------------------------------------------
    cl_dock, cl = dock("Clean up artifacts")
    cl.labels_layer.select("prediction")
    cl.phase.value = "pore"
    cl.min_area.value = 20
    cl.min_aspect.value = 2
    assert cl.analyse(), "the clean-up widget refused to analyse"
    wait(app, job_done(cl), 300, "blob analysis")
    if cl.blobs is not None and len(cl.blobs) and cl.selection.any():
        z = int(cl.blobs.slice_index[np.flatnonzero(cl.selection)[0]])
        viewer.dims.set_current_step(0, z)
    shoot("widget-cleanup.png", cl_dock)
    if "blob selection" in viewer.layers:
        viewer.layers.remove("blob selection")
    viewer.dims.set_current_step(0, 64)

    # Export: the form says ~/scans/prediction.tif, the files go to a scratch home ----------------
    ex_dock, ex = dock("Export")
    ex.labels_layer.select("prediction")
    viewer.layers.selection.active = viewer.layers["prediction"]
    home = scratch_dir / "home"
    (home / "scans").mkdir(parents=True)
    ex.path.value = SHOWN_EXPORT
    real_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)  # read once, when the export starts
    try:
        assert ex.export(), "the export widget refused to export"
    finally:
        if real_home is None:
            del os.environ["HOME"]
        else:
            os.environ["HOME"] = real_home
    wait(app, job_done(ex), 300, "export")
    written = sorted(p.name for p in (home / "scans").iterdir())
    assert "prediction.tif" in written, written
    # The status names the folder it wrote to: as the user's home would show, with ~.
    ex.status.value = str(ex.status.value).replace(str(home), "~")
    shoot("widget-export.png", ex_dock)

    viewer.close()
    pump(app, 0.5)

    # The real glass-fibre scan, opened with the plugin's reader ------------------------------------
    if args.real_scan.exists():
        viewer, app = open_viewer()
        window = viewer.window._qt_window
        layers = viewer.open(str(args.real_scan), plugin=PLUGIN)
        scan = layers[0]
        viewer.dims.set_current_step(0, scan.data.shape[0] // 2)
        seg_dock, seg = dock("Segment")
        seg.image.select(scan)
        wait(app, lambda: seg.devices_found.value != "looking…", 120, "looking for devices")
        assert seg.run(), "the segment widget refused to segment the real scan"
        wait(app, job_done(seg), 900, "segmenting the real scan")
        viewer.layers.selection.active = viewer.layers["prediction"]
        shoot("widget-segment-real.png", seg_dock)
        viewer.close()
        pump(app, 0.5)
    else:
        log.warning("no %s: no widget-segment-real.png", args.real_scan)

    # The loop ------------------------------------------------------------------------------------
    loop = args.out / "loop.png"
    quantise(loop_figure(panels), loop, LOOP_MAX_BYTES)

    scratch.cleanup()
    for m in messages:
        log.info("notification %s", m)
    errors = [m for m in messages if m.startswith("error")]
    too_big = [p for p in shots if p.stat().st_size > MAX_BYTES]
    if loop.stat().st_size > LOOP_MAX_BYTES:
        too_big.append(loop)
    print("\n".join(str(p) for p in [*shots, loop]))
    if errors:
        log.error("error notifications: %s", errors)
        return 1
    if too_big:
        log.error("too large: %s", too_big)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
