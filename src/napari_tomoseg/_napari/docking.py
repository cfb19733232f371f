"""napari-tomoseg's docks share one tabbed area, however they were opened, so the window fits a screen.

a widget's ``__init__`` -> :func:`tabify_docks(viewer)` (once per window: an event filter on napari's
main window) -> every napari-tomoseg dock added from then on (Plugins menu, ``tomoseg gui``,
``viewer.window.add_plugin_dock_widget``) joins the tab group of the first one in its area, in front.

napari stacks the docks of a plugin one under the other when they come from the Plugins menu (it
tabifies only when ``add_dock_widget(..., tabify=True)`` is asked for, which the menu never does), and
seven stacked forms make the window taller than any screen. A dock the user drags out or apart later
stays where the user put it: only docks added after it are tabified.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow

log = logging.getLogger(__name__)

__all__ = ["PLUGIN", "is_tomoseg_dock", "tabify_docks", "tomoseg_docks"]

PLUGIN = "napari-tomoseg"
_SUFFIX = f" ({PLUGIN})"  # napari names a plugin's dock "<widget> (<plugin>)"
_OBJECT_NAME = "napari-tomoseg dock tabifier"


def is_tomoseg_dock(dock: QDockWidget) -> bool:
    """True for the dock of a napari-tomoseg widget (named ``"<widget> (napari-tomoseg)"`` by napari)."""
    return dock.objectName().endswith(_SUFFIX)


def tomoseg_docks(window: QMainWindow) -> list[QDockWidget]:
    """The napari-tomoseg docks of ``window``, in the order they were added."""
    return [d for d in window.findChildren(QDockWidget) if is_tomoseg_dock(d)]


class _Tabifier(QObject):
    """Watches a main window for new docks and tabs napari-tomoseg's together."""

    def __init__(self, window: QMainWindow) -> None:
        super().__init__(window)
        self.setObjectName(_OBJECT_NAME)
        # The window is this object's Qt parent, not an attribute: a reference from here would keep
        # a closed viewer alive.
        self._known: weakref.WeakSet[QDockWidget] = weakref.WeakSet()
        self._pending = False
        window.installEventFilter(self)
        self._arrange_soon()  # docks added before the first widget asked for this

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:
        if (
            event is not None
            and event.type() == QEvent.Type.ChildAdded
            and isinstance(event.child(), QDockWidget)  # type: ignore[attr-defined]
        ):
            self._arrange_soon()
        return False

    def _arrange_soon(self) -> None:
        # napari names, places and sizes a dock after adding it: arrange once it is done.
        if not self._pending:
            self._pending = True
            QTimer.singleShot(0, self.arrange)

    def arrange(self) -> None:
        """Tab every napari-tomoseg dock not seen before with the first other one of its area."""
        self._pending = False
        try:
            window = self.parent()
        except RuntimeError:  # the window is gone
            return
        if not isinstance(window, QMainWindow):
            return
        docks = tomoseg_docks(window)
        new = [d for d in docks if d not in self._known]
        self._known.update(docks)
        front = None
        for dock in new:
            if dock.isFloating() or dock.isHidden():
                continue
            area = window.dockWidgetArea(dock)
            anchor = next(
                (
                    d
                    for d in docks
                    if d is not dock
                    and not d.isFloating()
                    and not d.isHidden()
                    and window.dockWidgetArea(d) == area
                ),
                None,
            )
            if anchor is None or dock in window.tabifiedDockWidgets(anchor):
                continue  # already tabbed (tomoseg gui asks napari for it)
            window.tabifyDockWidget(anchor, dock)
            front = dock
        if front is not None:
            front.show()
            front.raise_()  # the widget the user just opened is the one in front


def tabify_docks(viewer: Any) -> None:
    """Tab napari-tomoseg's docks together in ``viewer``'s window from now on (idempotent).

    Call it in every dock widget's ``__init__``; a viewer without a Qt window is left alone.
    """
    window = getattr(getattr(viewer, "window", None), "_qt_window", None)
    if not isinstance(window, QMainWindow):
        return
    if window.findChild(_Tabifier, _OBJECT_NAME) is None:
        _Tabifier(window)
