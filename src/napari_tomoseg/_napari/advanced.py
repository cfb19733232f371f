"""A collapsible "Advanced options" section for the dock widgets.

widgets the user rarely changes -> ``Advanced(widgets)`` (a magicgui Container: a toggle button over a
hidden inner container) -> appended to a widget's form; collapsed until the user clicks the button.

Usage::

    from napari_tomoseg._napari.advanced import Advanced

    self.advanced = Advanced([self.overlap, self.batch_size], text="Advanced options")
    self.extend([self.model, self.run_button, self.advanced])
    self.advanced.expanded = True  # open it from code (e.g. in a test)

The widgets stay ordinary magicgui widgets: read and set their ``.value`` as before, whether the section
is open or not. The inner widgets are also reachable as ``advanced.body`` (a Container).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from magicgui.widgets import Container, PushButton, SpinBox, Widget

__all__ = ["Advanced", "threads_box"]

_CLOSED = "▸"
_OPEN = "▾"


class Advanced(Container):
    """A collapsible section: a toggle button, then ``widgets`` shown only while expanded.

    Parameters
    ----------
    widgets
        The magicgui widgets to put in the section, in order (labels come from each widget's ``label``).
    text
        The button's text; an arrow (▸ closed, ▾ open) is appended.
    expanded
        Whether the section starts open; collapsed by default.

    Attributes
    ----------
    toggle
        The PushButton that opens and closes the section.
    body
        The Container holding ``widgets``.
    """

    def __init__(
        self,
        widgets: Sequence[Widget],
        text: str = "Advanced options",
        *,
        expanded: bool = False,
    ) -> None:
        super().__init__(labels=False)
        self._text = text
        self.toggle = PushButton(text=f"{text} {_CLOSED}")
        self.toggle.tooltip = "Show or hide options that rarely need changing"
        self.body = Container(widgets=list(widgets))
        self.body.margins = (0, 0, 0, 0)
        self.margins = (0, 0, 0, 0)
        self.extend([self.toggle, self.body])
        self._expanded = not expanded  # so that the setter below always applies
        self.expanded = expanded
        self.toggle.changed.connect(self._flip)

    @property
    def expanded(self) -> bool:
        """True while the section's widgets are shown; set it to open or close the section."""
        return self._expanded

    @expanded.setter
    def expanded(self, value: bool) -> None:
        value = bool(value)
        if value == self._expanded:
            return
        self._expanded = value
        self.toggle.text = f"{self._text} {_OPEN if value else _CLOSED}"
        # visible=False on a never-shown widget keeps it hidden when the dock is shown; True only
        # takes effect once the parent is shown, which is what napari's docks do.
        self.body.visible = value

    def _flip(self, *_: object) -> None:
        self.expanded = not self._expanded


def threads_box(work: str) -> SpinBox:
    """The "CPU threads" field of a widget whose jobs run the network (0 shows as "auto").

    ``work`` says what the threads do, e.g. "trains" or "computes", for the tooltip.
    """
    box = SpinBox(
        label="CPU threads",
        value=0,
        min=0,
        max=max(1, os.cpu_count() or 1),
        tooltip=f"Threads the network {work} with on the CPU; auto: the cores napari may use that "
        "are idle when the run starts. "
        "Fewer leave cores free for other programs. Applies to this run and later ones; a run "
        "already going keeps its own.",
    )
    box.native.setSpecialValueText("auto")
    return box
