"""Tables of the dock widgets, as magicgui ``Table`` widgets: the editable phase table of the Annotate
widget and the read-only result tables (per-phase scores, confusion matrix) of the Evaluate widget.

PhaseTable -> :meth:`PhaseTableView.show` -> rows (key, name, colour); a click or an edit -> the
view's signals (``phase_clicked``, ``colour_clicked``, ``renamed``) -> the widget changes the table.
(header, rows) -> :meth:`ResultTable.show_rows` -> formatted, read-only cells (``compact``: short
headers and numbers that fit a dock, the full header and the exact number in each tooltip).
Headers stay short; what a column means is in its header's tooltip.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from magicgui.widgets import Table
from psygnal import Signal
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidgetItem

from napari_tomoseg.core.measure.report import format_cell
from napari_tomoseg.core.phases import PhaseTable

__all__ = ["PHASE_COLUMNS", "PhaseTableView", "ResultTable", "compact_number", "counted"]

PHASE_COLUMNS = ("key", "phase", "colour")
PHASE_TOOLTIPS = (
    "Number key that paints the phase while 'Keys 1-9 paint phases' is on",
    "Click a phase to paint it; double-click to rename it",
    "Click to change the colour",
)
_NAME, _COLOUR = 1, 2


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1: ``counted(1, "slice")`` -> ``"1 slice"``,
    ``counted(2_000, "voxel")`` -> ``"2,000 voxels"``."""
    word = noun if n == 1 else (plural or f"{noun}s")
    return f"{n:,} {word}"


def compact_number(value: float) -> str:
    """A count or size in at most about five characters: ``1,234``, ``35.1 k``, ``1.72 M``, ``4.1 G``."""
    v = float(value)
    if not np.isfinite(v):
        return "n/a"
    if abs(v) < 10_000:
        return f"{v:,.0f}" if v == int(v) else f"{v:.4g}"
    for scale, unit in ((1e3, "k"), (1e6, "M"), (1e9, "G")):
        text = f"{v / scale:.3g}"
        if abs(float(text)) < 1000:  # 999,999 is "1 M", not "1e+03 k"
            return f"{text} {unit}"
    return f"{v / 1e12:.3g} T"


def _set_header_tooltips(table: Any, tooltips: Sequence[str]) -> None:
    for col, tip in enumerate(tooltips):
        item = table.horizontalHeaderItem(col)
        if item is not None and tip:
            item.setToolTip(tip)


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
            _set_header_tooltips(table, PHASE_TOOLTIPS)
            table.resizeColumnsToContents()
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
    (%, µm³, 4 decimals).

    Parameters
    ----------
    tooltip
        The table's tooltip.
    row_headers
        Show the ``index`` of :meth:`show_rows` as row headers.
    compact
        Fit a dock's width: counts and volumes as ``1.72 M``, fractions as ``12.3 %``, scores with 3
        decimals, headers shortened by ``short_headers``; every cell's tooltip holds the exact number
        and every header's the full column name.
    short_headers
        ``{column: shown header}`` used when ``compact``.
    """

    def __init__(
        self,
        *,
        tooltip: str | None = None,
        row_headers: bool = False,
        compact: bool = False,
        short_headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(value={"data": [], "index": [], "columns": []}, tooltip=tooltip)
        self.read_only = True
        self.compact = compact
        self.short_headers = dict(short_headers or {})
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
        cell = _compact_cell if self.compact else _cell
        data = [[cell(v, header[c]) for c, v in enumerate(row)] for row in rows]
        shown = [self.short_headers.get(h, h) for h in header] if self.compact else list(header)
        # All three keys: without "index", magicgui reads the dict as columns named "data", ...
        self.value = {
            "data": data,
            "index": list(index) if index is not None else list(range(len(data))),
            "columns": shown,
        }
        if self.compact:
            table = self.native
            _set_header_tooltips(table, list(header))
            for r, row in enumerate(rows):
                for c, v in enumerate(row):
                    item = table.item(r, c)
                    if item is not None and not isinstance(v, str) and v is not None:
                        item.setToolTip(_cell(v, header[c]))
                    if item is not None and not isinstance(v, str):
                        item.setTextAlignment(
                            Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                        )
            table.resizeColumnsToContents()


def _cell(value: Any, column: str) -> str:
    """Counts as integers with thousands separators, other numbers as the report formats them."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}"
    return format_cell(value, column)


def _compact_cell(value: Any, column: str) -> str:
    """Counts and volumes as ``1.72 M``, fractions as ``12.3 %``, scores with 3 decimals."""
    if value is None or isinstance(value, str):
        return format_cell(value, column)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return compact_number(int(value))
    v = float(value)
    if not np.isfinite(v):
        return "n/a"
    if "volume" in column:
        return compact_number(v)
    if "fraction" in column:
        return f"{100 * v:.1f} %"
    return f"{v:.3f}"
