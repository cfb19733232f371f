"""Plots of the Measure widget, in napari's colours: fraction profile, size histogram, orientation.

:class:`~napari_tomoseg.core.measure.measurements.Measurements` -> :meth:`MeasurePlots.show` -> three tabs
(matplotlib Qt canvases): each phase's fraction along the axis; the size distribution of one phase's
objects; the angles of the fibre axes to the axis, with the orientation tensor as a 3x3 table.
Colours follow the viewer's theme (``napari.utils.theme.get_theme``) and change with it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container
from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from napari_tomoseg._napari.plots import apply_theme, theme_colours
from napari_tomoseg._napari.tables import ResultTable

if TYPE_CHECKING:
    import napari

    from napari_tomoseg.core.measure.measurements import Measurements

log = logging.getLogger(__name__)

__all__ = ["PLOTS", "MeasurePlots", "theme_colours"]

#: The tabs, in order.
PLOTS = ("profile", "sizes", "orientation")
_TITLES = {"profile": "Profile", "sizes": "Sizes", "orientation": "Orientation"}


class MeasurePlots(Container):
    """Three tabs of plots of a measurement. ``figures[name]`` is each tab's matplotlib figure
    (``name`` in :data:`PLOTS`); ``tensor_table`` shows the orientation tensor."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(labels=False)
        self.margins = (0, 0, 0, 0)
        self.viewer = viewer
        self.tabs = QTabWidget()
        self.figures: dict[str, Any] = {}
        self.canvases: dict[str, Any] = {}
        self.tensor_table = ResultTable(
            tooltip="Orientation tensor a_ij (trace 1), rows and columns in (z, y, x) order",
            row_headers=True,
        )
        for name in PLOTS:
            figure = Figure(figsize=(4, 2.6), layout="constrained")
            canvas = FigureCanvasQTAgg(figure)
            canvas.setMinimumHeight(200)
            page = QWidget()
            layout = QVBoxLayout(page)
            layout.setContentsMargins(0, 0, 0, 0)
            layout.addWidget(canvas)
            if name == "orientation":
                self.tensor_table.native.setMaximumHeight(120)
                layout.addWidget(self.tensor_table.native)
            self.tabs.addTab(page, _TITLES[name])
            self.figures[name], self.canvases[name] = figure, canvas
        self.native.layout().addWidget(self.tabs)
        self._last: tuple[Measurements, str | None] | None = None
        viewer.events.theme.connect(self._theme_changed)
        self.clear()

    # ----------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Empty plots that say what fills them."""
        self._last = None
        for name in PLOTS:
            self._message(name, "Measure to see this plot.")
        self.tensor_table.show_rows([], [])

    def show(self, m: Measurements, size_phase: str | None = None) -> None:
        """Draw every plot of ``m``; the size histogram of ``size_phase`` (default: the measured
        phase with the most objects)."""
        self._last = (m, size_phase)
        self._profile(m)
        self._sizes(m, size_phase)
        self._orientation(m)

    def _theme_changed(self, *_: Any) -> None:
        try:
            self.native.isVisible()
        except RuntimeError:  # the dock was closed: stop following the theme
            self.viewer.events.theme.disconnect(self._theme_changed)
            return
        if self._last is not None:
            self.show(*self._last)
        else:
            self.clear()

    # ----------------------------------------------------------------------------------------
    def _axes(self, name: str) -> Any:
        figure = self.figures[name]
        figure.clear()
        ax = figure.add_subplot(111)
        apply_theme(figure, theme_colours(self.viewer))
        return ax

    def _legend(self, ax: Any) -> None:
        colours = theme_colours(self.viewer)
        legend = ax.legend(fontsize="small", loc="best", facecolor=colours["foreground"])
        legend.get_frame().set_edgecolor(colours["text"])
        for text in legend.get_texts():
            text.set_color(colours["text"])

    def _message(self, name: str, text: str) -> None:
        ax = self._axes(name)
        ax.set_axis_off()
        ax.text(
            0.5,
            0.5,
            text,
            ha="center",
            va="center",
            wrap=True,
            color=theme_colours(self.viewer)["text"],
        )
        self.canvases[name].draw_idle()

    def _profile(self, m: Measurements) -> None:
        profile = m.profile
        if profile is None:
            self._message("profile", "No profile measured.")
            return
        ax = self._axes("profile")
        f = profile.fractions
        for j, p in enumerate(m.phases.phases):
            ax.plot(profile.positions, 100 * f[:, j], color=p.colour, label=p.name, lw=1.2)
        ax.set_xlabel(f"{profile.axis} ({m.units.length})")
        ax.set_ylabel("fraction (%)")
        if m.phases.phases:
            self._legend(ax)
        self.canvases["profile"].draw_idle()

    def _sizes(self, m: Measurements, phase: str | None) -> None:
        if not m.objects:
            self._message("sizes", "No objects measured.")
            return
        if phase not in m.objects:
            phase = max(m.objects, key=lambda n: len(m.objects[n]))
        table = m.objects[phase]
        if len(table) == 0:
            self._message("sizes", f"No object of {phase}: the phase is empty.")
            return
        dist = table.size_distribution()
        ax = self._axes("sizes")
        widths = np.diff(dist.edges)
        colour = m.phases.phases[m.phases.id_of(phase) - 1].colour
        ax.bar(
            dist.edges[:-1],
            100 * dist.volume_fraction,
            widths,
            align="edge",
            color=colour,
            alpha=0.85,
            label="by volume",
        )
        ax.step(
            dist.edges[:-1],
            100 * dist.number_fraction,
            where="post",
            color=theme_colours(self.viewer)["text"],
            lw=1.0,
            label="by number",
        )
        ax.set_xlabel(f"equivalent diameter ({m.units.length})")
        ax.set_ylabel(f"{phase} objects (%)")
        ax.set_title(f"{len(table):,} objects of {phase}", fontsize="small")
        self._legend(ax)
        self.canvases["sizes"].draw_idle()

    def _orientation(self, m: Measurements) -> None:
        self.tensor_table.show_rows([], [])
        if not m.orientation:
            note = next((n for n in m.notes if "orientation" in n), "No orientation measured.")
            self._message("orientation", note)
            return
        name, ori = next(iter(m.orientation.items()))
        if ori.voxels == 0:
            self._message("orientation", ori.note)
            return
        ax = self._axes("orientation")
        edges = ori.angle_edges
        colour = m.phases.phases[m.phases.id_of(name) - 1].colour
        ax.bar(edges[:-1], 100 * ori.angle_fraction, np.diff(edges), align="edge", color=colour)
        ax.set_xlim(0, 90)
        ax.set_xlabel(f"angle of the fibre axis to {ori.axis} (°)")
        ax.set_ylabel(f"{name} voxels (%)")
        ax.set_title(f"orientation of {name} ({ori.voxels:,} voxels)", fontsize="small")
        self.canvases["orientation"].draw_idle()
        axes = ["z", "y", "x"]
        self.tensor_table.show_rows(
            axes, [[float(v) for v in row] for row in ori.tensor], index=axes
        )
