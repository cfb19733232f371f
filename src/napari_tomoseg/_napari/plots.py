"""Plots of the dock widgets (matplotlib on a Qt canvas; magicgui has no plot widget), in napari's
colours.

:class:`TrainingPlot`: TrainProgress events -> training loss and validation Jaccard per phase against
the step, redrawn at most once a second.
napari's theme (a viewer's, or the one in napari's settings) -> :func:`theme_colours` ->
:func:`apply_theme` (figure and axes recoloured); :func:`follow_theme` re-applies it on a change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QObject
from qtpy.QtWidgets import QVBoxLayout, QWidget

log = logging.getLogger(__name__)

__all__ = ["TrainingPlot", "apply_theme", "follow_theme", "theme_colours"]


def theme_colours(viewer: Any = None) -> dict[str, str]:
    """``background``, ``foreground`` and ``text`` colours (hex) of napari's theme.

    The theme of ``viewer``, or without one the theme chosen in napari's settings (which new viewers
    use); an unknown theme reads as napari's default, dark.
    """
    from napari.utils.theme import get_theme

    if viewer is not None:
        name = viewer.theme
    else:
        from napari.settings import get_settings

        name = get_settings().appearance.theme
    try:
        theme = get_theme(name)
    except ValueError:  # a theme removed since it was chosen: napari falls back to dark too
        theme = get_theme("dark")
    return {
        "background": theme.background.as_hex(),
        "foreground": theme.foreground.as_hex(),
        "text": theme.text.as_hex(),
    }


def apply_theme(figure: Any, colours: dict[str, str]) -> None:
    """Colour ``figure`` (background), its axes (panel, spines, ticks, labels, titles) and legends."""
    figure.set_facecolor(colours["background"])
    for ax in figure.axes:
        ax.set_facecolor(colours["foreground"])
        for spine in ax.spines.values():
            spine.set_color(colours["text"])
        ax.tick_params(colors=colours["text"], which="both")
        ax.xaxis.label.set_color(colours["text"])
        ax.yaxis.label.set_color(colours["text"])
        ax.title.set_color(colours["text"])
        for text in ax.texts:
            text.set_color(colours["text"])
        legend = ax.get_legend()
        if legend is not None:
            legend.get_frame().set_facecolor(colours["foreground"])
            legend.get_frame().set_edgecolor(colours["text"])
            for text in legend.get_texts():
                text.set_color(colours["text"])


class _ThemeFollower(QObject):
    """Lives as long as its owner widget; napari's emitters hold its method weakly, so neither a
    viewer nor napari's settings keep a closed dock alive."""

    def __init__(self, owner: QWidget, restyle: Callable[[], None]) -> None:
        super().__init__(owner)
        self._restyle = restyle

    def changed(self, *_: Any) -> None:
        self._restyle()


def follow_theme(owner: QWidget, restyle: Callable[[], None], viewer: Any = None) -> None:
    """Call ``restyle`` whenever napari's theme changes (the viewer's, or the settings' without one),
    for as long as ``owner`` exists (until its dock is closed)."""
    if viewer is not None:
        emitter = viewer.events.theme
    else:
        from napari.settings import get_settings

        emitter = get_settings().appearance.events.theme
    emitter.connect(_ThemeFollower(owner, restyle).changed)


class TrainingPlot(QWidget):
    """Training loss and validation Jaccard per phase against the step (matplotlib Qt canvas).

    Redraws are coalesced (``draw_idle``) and throttled, so a fast training loop never floods the
    Qt event loop with drawing.
    """

    def __init__(self, parent: QWidget | None = None, *, viewer: Any = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.2), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(220)
        self.ax_loss = self.figure.add_subplot(2, 1, 1)
        self.ax_val = self.figure.add_subplot(2, 1, 2, sharex=self.ax_loss)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._last_draw = 0.0
        self.reset([])
        follow_theme(self, self.restyle, viewer)

    def restyle(self) -> None:
        """Recolour the plot in napari's current theme (the loss line in the theme's text colour)."""
        colours = theme_colours(self.viewer)
        apply_theme(self.figure, colours)
        self.loss_line.set_color(colours["text"])
        self.canvas.draw_idle()

    def reset(self, names: list[str], colours: list[str] | None = None) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val: list[tuple[float, ...]] = []
        self.names = names
        self.colours = colours or [None] * len(names)  # type: ignore[list-item]
        self.ax_loss.clear()
        self.ax_val.clear()
        (self.loss_line,) = self.ax_loss.plot([], [], lw=1)
        self.ax_loss.set_ylabel("loss")
        self.val_lines = [
            self.ax_val.plot([], [], marker="o", ms=3, label=n, color=c)[0]
            for n, c in zip(names, self.colours, strict=True)
        ]
        self.ax_val.set_ylabel("val. Jaccard")
        self.ax_val.set_xlabel("step")
        self.ax_val.set_ylim(0, 1.02)
        if names:
            self.ax_val.legend(loc="lower right", fontsize="small")
        self.restyle()

    def add(self, event: Any) -> None:
        # The validation closing a run comes as the last step's event again: one point per step.
        again = bool(self.steps) and int(event.step) == self.steps[-1]
        if not again:
            self.steps.append(int(event.step))
            self.losses.append(float(event.loss))
        if event.validation is not None:
            if self.val_steps and self.val_steps[-1] == int(event.step):
                self.val[-1] = tuple(float(v) for v in event.validation)
            else:
                self.val_steps.append(int(event.step))
                self.val.append(tuple(float(v) for v in event.validation))
        # A matplotlib draw costs tens of ms on the Qt thread: at most one a second (and at each
        # validation), whatever the speed of training.
        if time.perf_counter() - self._last_draw > 1.0 or event.validation is not None:
            self.redraw()

    def add_start(self, scores: Any) -> None:
        """Show the starting model's validation (per phase, before any step) at step 0."""
        if self.val_steps and self.val_steps[0] == 0:
            self.val_steps.pop(0)
            self.val.pop(0)
        self.val_steps.insert(0, 0)
        self.val.insert(0, tuple(float(v) for v in scores))
        self.redraw()

    def redraw(self) -> None:
        self._last_draw = time.perf_counter()
        self.loss_line.set_data(self.steps, self.losses)
        for i, line in enumerate(self.val_lines):
            line.set_data(self.val_steps, [v[i] if i < len(v) else np.nan for v in self.val])
        self.ax_loss.relim()
        self.ax_loss.autoscale_view()
        self.canvas.draw_idle()
