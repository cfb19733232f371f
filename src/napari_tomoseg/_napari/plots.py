"""Live plots of the dock widgets (matplotlib on a Qt canvas; magicgui has no plot widget).

:class:`TrainingPlot`: TrainProgress events -> training loss and validation Jaccard per phase against
the step, redrawn at most once a second.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget

__all__ = ["TrainingPlot"]


class TrainingPlot(QWidget):
    """Training loss and validation Jaccard per phase against the step (matplotlib Qt canvas).

    Redraws are coalesced (``draw_idle``) and throttled, so a fast training loop never floods the
    Qt event loop with drawing.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
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

    def reset(self, names: list[str], colours: list[str] | None = None) -> None:
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.val_steps: list[int] = []
        self.val: list[tuple[float, ...]] = []
        self.names = names
        self.colours = colours or [None] * len(names)  # type: ignore[list-item]
        self.ax_loss.clear()
        self.ax_val.clear()
        (self.loss_line,) = self.ax_loss.plot([], [], color="#444444", lw=1)
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
        self.canvas.draw_idle()

    def add(self, event: Any) -> None:
        self.steps.append(int(event.step))
        self.losses.append(float(event.loss))
        if event.validation is not None:
            self.val_steps.append(int(event.step))
            self.val.append(tuple(float(v) for v in event.validation))
        # A matplotlib draw costs tens of ms on the Qt thread: at most one a second (and at each
        # validation), whatever the speed of training.
        if time.perf_counter() - self._last_draw > 1.0 or event.validation is not None:
            self.redraw()

    def redraw(self) -> None:
        self._last_draw = time.perf_counter()
        self.loss_line.set_data(self.steps, self.losses)
        for i, line in enumerate(self.val_lines):
            line.set_data(self.val_steps, [v[i] if i < len(v) else np.nan for v in self.val])
        self.ax_loss.relim()
        self.ax_loss.autoscale_view()
        self.canvas.draw_idle()
