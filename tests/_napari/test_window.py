"""The napari window with napari-tomoseg's widgets: it fits a 1920x1080 screen however the widgets are
opened (Plugins menu or ``tomoseg gui``), the docks share one tab group, the Evaluate table fits its
dock, and the plots follow napari's theme."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from qtpy.QtWidgets import QApplication

from napari_tomoseg._cli.gui import _widget_names, open_viewer
from napari_tomoseg._napari.docking import tomoseg_docks
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg._napari.layers import apply_phases
from napari_tomoseg.core.phases import COMPOSITE_PHASES

SCREEN = (1920, 1080)
PLUGIN = "napari-tomoseg"


def _show(viewer, qtbot):
    window = viewer.window._qt_window
    window.resize(1600, 1000)
    window.show()
    qtbot.waitExposed(window)
    for _ in range(5):
        QApplication.processEvents()
    return window


def _assert_fits(window):
    frame = window.frameGeometry()
    assert frame.width() <= SCREEN[0] and frame.height() <= SCREEN[1], frame
    inside = window.rect()
    shown = _front(window, tomoseg_docks(window))
    assert shown
    for dock in shown:
        assert inside.contains(dock.geometry()), (dock.objectName(), dock.geometry(), inside)


def _front(window, docks):
    """The docks on screen (Qt moves the tabs behind the current one out of the window)."""
    return [d for d in docks if not d.visibleRegion().isEmpty()]


def test_widgets_from_the_plugins_menu_share_one_tab_group_and_fit(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    window = _show(viewer, qtbot)
    names = _widget_names()
    for name in names:
        # What Plugins > napari-tomoseg > <name> does: no tabify asked for.
        viewer.window.add_plugin_dock_widget(PLUGIN, name)
        QApplication.processEvents()
    docks = tomoseg_docks(window)
    assert len(docks) == len(names)
    qtbot.waitUntil(lambda: len(window.tabifiedDockWidgets(docks[0])) == len(docks) - 1)
    qtbot.wait(50)  # the window gets back its size once the docks are tabbed
    _assert_fits(window)
    assert [d.objectName() for d in _front(window, docks)] == [f"{names[-1]} ({PLUGIN})"]


def test_tomoseg_gui_fits_with_segment_in_front(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    open_viewer(viewer, None)
    window = _show(viewer, qtbot)
    docks = tomoseg_docks(window)
    assert len(window.tabifiedDockWidgets(docks[0])) == len(docks) - 1
    _assert_fits(window)
    assert [d.objectName() for d in _front(window, docks)] == [f"Segment ({PLUGIN})"]


def test_a_dock_the_user_moved_apart_stays_apart(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    window = _show(viewer, qtbot)
    first, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Annotate")
    second, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    qtbot.waitUntil(lambda: second in window.tabifiedDockWidgets(first))
    window.addDockWidget(Qt.DockWidgetArea.LeftDockWidgetArea, second)  # the user drags it away
    third, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Clean up artifacts")
    qtbot.waitUntil(lambda: third in window.tabifiedDockWidgets(first))
    assert window.dockWidgetArea(second) == Qt.DockWidgetArea.LeftDockWidgetArea


def test_evaluate_table_fits_its_dock(sample_viewer, small_phantom, qtbot, wait_job):
    _, truth = small_phantom
    rng = np.random.default_rng(0)
    pred = truth.copy()
    flip = rng.random(truth.shape) < 0.1
    pred[flip] = (truth[flip] % 3) + 1
    layer = sample_viewer.add_labels(pred, name="prediction", scale=(1.3,) * 3)
    apply_phases(layer, COMPOSITE_PHASES)
    window = _show(sample_viewer, qtbot)
    for name in _widget_names():  # in the tab group, at the width the group gets
        sample_viewer.window.add_plugin_dock_widget(PLUGIN, name)
    _, w = sample_viewer.window.add_plugin_dock_widget(PLUGIN, "Evaluate")
    w.image.select("composite")  # with the grey-level baseline: the widest table
    assert w.run()
    assert wait_job(w.runner) is JobState.DONE
    tables = (w.table.native, w.confusion_table.native)
    qtbot.waitUntil(lambda: all(t.isVisible() for t in tables))
    QApplication.processEvents()
    for table in tables:
        assert table.horizontalHeader().length() <= table.viewport().width(), table.toolTip()
        assert not table.horizontalScrollBar().isVisible()
    _assert_fits(window)
    header = [w.table.native.horizontalHeaderItem(c) for c in range(w.table.native.columnCount())]
    assert "fraction (prediction)" in [h.toolTip() for h in header]  # the full name on hover
    jaccard = w.table.data[0, 1]
    assert len(jaccard.split(".")[1]) == 3  # 3 decimals


def _is_dark(colour) -> bool:
    r, g, b = to_rgb(colour)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.35


@pytest.mark.parametrize("which", ["evaluate", "cleanup", "training"])
def test_plots_follow_the_theme(make_napari_viewer, qtbot, which):
    viewer = make_napari_viewer()
    viewer.theme = "dark"
    if which == "evaluate":
        from napari_tomoseg._napari.evaluate import EvaluateWidget

        w = EvaluateWidget(viewer)
        qtbot.addWidget(w.native)
        figure = w.plot.figure
    elif which == "cleanup":
        from napari_tomoseg._napari.cleanup import CleanupWidget

        w = CleanupWidget(viewer)
        qtbot.addWidget(w.native)
        figure = w.scatter.figure
    else:
        from napari_tomoseg._napari.plots import TrainingPlot

        w = TrainingPlot(viewer=viewer)
        qtbot.addWidget(w)
        figure = w.figure
    assert _is_dark(figure.get_facecolor())
    for ax in figure.axes:  # text in the theme's (light) text colour
        assert not _is_dark(ax.xaxis.label.get_color())
    viewer.theme = "light"
    assert not _is_dark(figure.get_facecolor())
    viewer.theme = "dark"
    assert _is_dark(figure.get_facecolor())
