"""napari-tomoseg's docks share one tabbed area, however they were opened, so the window fits a screen.

a widget's ``__init__`` -> :func:`tabify_docks(self)` -> once napari has docked it, an event filter on
the main window (one per window) -> every napari-tomoseg dock in it and added from then on (Plugins
menu, ``tomoseg gui``, ``viewer.window.add_plugin_dock_widget``) joins the tab group of the first one
in its area, in front.

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
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

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
        # The window is this object's Qt parent, not an attribute, and docks are held weakly: a
        # reference from here would keep a closed viewer alive.
        self._placed: list[weakref.ref[QDockWidget]] = []  # in the order they were first placed
        self._pending = False
        self._unshown: weakref.WeakSet[QDockWidget] = weakref.WeakSet()  # added, not shown yet
        self._size = window.size()  # as the user left it, before napari stacked a new dock
        window.installEventFilter(self)
        self.arrange_soon()  # docks added before the first widget asked for this

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:
        # A child is only a QObject when ChildAdded is sent (its constructor has not run yet), so
        # any new child triggers a (deferred, coalesced, cheap) look at the docks.
        if event is None:
            return False
        if event.type() == QEvent.Type.ChildAdded or (
            event.type() == QEvent.Type.Show and obj in self._unshown
        ):
            self.arrange_soon()
        elif (
            event.type() == QEvent.Type.Resize
            and obj is self.parent()
            and not self._pending
            and not self._unshown
        ):
            self._size = event.size()  # type: ignore[attr-defined]
        return False

    def arrange_soon(self) -> None:
        """Arrange the docks once napari has finished adding one (names, places and sizes it)."""
        if not self._pending:
            self._pending = True
            QTimer.singleShot(0, self.arrange)

    def _window(self) -> QMainWindow | None:
        """The main window watched, or None once it is gone."""
        try:
            window = self.parent()
        except RuntimeError:  # the window is gone
            return None
        return window if isinstance(window, QMainWindow) else None

    def arrange(self) -> None:
        """Tab every napari-tomoseg dock placed since the last look with the first placed one of its
        area; the last one tabbed comes to the front."""
        self._pending = False
        window = self._window()
        if window is None:
            return
        placed = [d for d in (ref() for ref in self._placed) if d is not None]
        front = None
        for dock in tomoseg_docks(window):
            if dock in placed or dock.isFloating():
                continue  # seen before (stays where the user put it), or floated by the user
            if dock.isHidden():  # napari shows a new dock after adding it: look again then
                if dock not in self._unshown:
                    self._unshown.add(dock)
                    dock.installEventFilter(self)
                continue
            if dock in self._unshown:
                self._unshown.discard(dock)
                dock.removeEventFilter(self)
            area = window.dockWidgetArea(dock)
            anchor = next(
                (
                    d
                    for d in placed
                    if not d.isFloating() and not d.isHidden() and window.dockWidgetArea(d) == area
                ),
                None,
            )
            placed.append(dock)
            self._placed.append(weakref.ref(dock))
            if anchor is None or dock in window.tabifiedDockWidgets(anchor):
                continue  # the first of its area, or already tabbed (tomoseg gui asks napari)
            window.tabifyDockWidget(anchor, dock)
            front = dock
        if front is not None:
            front.show()
            front.raise_()  # the widget the user just opened is the one in front
            self._pending = True  # the window's growth still to come is napari's, not the user's
            QTimer.singleShot(0, self._fit)

    def _fit(self) -> None:
        """napari stacked the new dock first and the window grew to hold the stack: give it back the
        size it had, within the screen (Qt keeps it as large as the tabbed docks need)."""
        self._pending = False
        window = self._window()
        if window is None:
            return
        layout = window.layout()
        if layout is not None:
            layout.activate()  # the stacked layout's pending growth happens now, not after
        size = window.size().boundedTo(self._size)
        screen = window.screen()
        if screen is not None:
            size = size.boundedTo(screen.availableGeometry().size())
        if size != window.size():
            self._pending = True
            window.resize(size)
            self._pending = False


class _WhenDocked(QObject):
    """Waits until a widget sits in a main window (napari docked it), then tabs the window's docks."""

    def eventFilter(self, obj: QObject | None, event: QEvent | None) -> bool:
        if (
            isinstance(obj, QWidget)
            and event is not None
            and event.type() in (QEvent.Type.ParentChange, QEvent.Type.Show)
        ):
            window = obj.window()
            if isinstance(window, QMainWindow):
                obj.removeEventFilter(self)
                tabifier = window.findChild(_Tabifier, _OBJECT_NAME)
                if tabifier is None:
                    _Tabifier(window)
                else:
                    tabifier.arrange_soon()
        return False


def tabify_docks(widget: Any) -> None:
    """Tab napari-tomoseg's docks together in the window ``widget`` gets docked into.

    Call it in every dock widget's ``__init__`` with the widget (a magicgui widget or a QWidget).
    The window is found from the widget once napari has docked it (plugins are handed a viewer
    proxy without access to napari's Qt window); a widget never docked in a window is left alone.
    """
    native = getattr(widget, "native", widget)
    native.installEventFilter(_WhenDocked(native))
