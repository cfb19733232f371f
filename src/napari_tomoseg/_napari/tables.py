"""Tables of the dock widgets, as magicgui ``Table`` widgets: the editable phase table of the Annotate
widget and the read-only result tables (per-phase scores, confusion matrix) of the Evaluate widget.

PhaseTable -> :meth:`PhaseTableView.show` -> rows (key, name, colour); a click or an edit -> the
view's signals (``phase_clicked``, ``colour_clicked``, ``renamed``) -> the widget changes the table.
(header, rows) -> :meth:`ResultTable.show_rows` -> formatted, read-only cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from magicgui.widgets import Table
from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidgetItem

from napari_tomoseg.core.measure.report import format_cell
from napari_tomoseg.core.phases import PhaseTable

__all__ = ["PHASE_COLUMNS", "PhaseTableView", "ResultTable"]

PHASE_COLUMNS = ("key", "phase (click to paint)", "colour")
_NAME, _COLOUR = 1, 2


class PhaseTableView(Table):
    """The phase table: number key, name (editable) and colour (click to change) of each phase.

    Signals carry phase ids (1..C): ``phase_clicked(id)`` for a click on the key or the name,
    ``colour_clicked(id)`` for a click on the colour, ``renamed(id, text)`` after a name was edited.
    """

    phase_clicked = Signal(int)
    colour_clicked = Signal(int)
    renamed = Signal(int, str)

    def __init__(self, phases: PhaseTable | None = None) -> None:
        super().__init__(value={"data": [], "index": [], "columns": PHASE_COLUMNS})
        self._filling = False
        table = self.native
        table.verticalHeader().setVisible(False)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setStretchLastSection(True)
        table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        table.cellClicked.connect(self._clicked)
        self.changed.connect(self._edited)
        if phases is not None:
            self.show_phases(phases)

    def show_phases(self, phases: PhaseTable) -> None:
        """Show ``phases`` (keys 1-9 paint the first nine)."""
        self._filling = True
        try:
            self.value = {
                "data": [[str(p.id) if p.id <= 9 else "", p.name, ""] for p in phases.phases],
                "index": list(phases.ids),
                "columns": PHASE_COLUMNS,
            }
            table = self.native
            for row, p in enumerate(phases.phases):
                for col in (0, _COLOUR):  # only names are edited in place
                    item = table.item(row, col)
                    if item is None:  # magicgui leaves empty cells without an item
                        item = QTableWidgetItem("")
                        table.setItem(row, col, item)
                    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
                colour = table.item(row, _COLOUR)
                colour.setBackground(QColor(p.colour))
                colour.setToolTip("click to change the colour")
        finally:
            self._filling = False

    def select_phase(self, phase_id: int) -> None:
        """Highlight the row of ``phase_id``."""
        self.native.selectRow(phase_id - 1)

    def _clicked(self, row: int, column: int) -> None:
        if column == _COLOUR:
            self.colour_clicked.emit(row + 1)
        else:
            self.phase_clicked.emit(row + 1)

    def _edited(self, info: Any) -> None:
        if self._filling or not isinstance(info, dict) or info.get("column") != _NAME:
            return
        self.renamed.emit(int(info["row"]) + 1, str(info["data"]).strip())


class ResultTable(Table):
    """A read-only table of results: counts as integers, other numbers formatted by their column
    (%, µm³, 4 decimals)."""

    def __init__(self, *, tooltip: str | None = None, row_headers: bool = False) -> None:
        super().__init__(value={"data": [], "index": [], "columns": []}, tooltip=tooltip)
        self.read_only = True
        self.native.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.native.verticalHeader().setVisible(row_headers)
        self.native.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)

    def show_rows(
        self,
        header: Sequence[str],
        rows: Sequence[Sequence[Any]],
        index: Sequence[str] | None = None,
    ) -> None:
        """Show ``rows`` under ``header`` (``index``: row headers)."""
        data = [[_cell(v, header[c]) for c, v in enumerate(row)] for row in rows]
        # All three keys: without "index", magicgui reads the dict as columns named "data", ...
        self.value = {
            "data": data,
            "index": list(index) if index is not None else list(range(len(data))),
            "columns": list(header),
        }


def _cell(value: Any, column: str) -> str:
    """Counts as integers with thousands separators, other numbers as the report formats them."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return format_cell(value, column)
