"""The collapsible Advanced section: collapsed by default, opened by its button, values kept."""

from __future__ import annotations

from magicgui.widgets import Container, SpinBox

from napari_tomoseg._napari.advanced import Advanced


def test_collapsed_by_default_and_toggles(qtbot):
    spin = SpinBox(value=3, label="overlap")
    adv = Advanced([spin], text="More")
    outer = Container(widgets=[adv])
    qtbot.addWidget(outer.native)
    outer.native.show()
    assert adv.expanded is False
    assert not adv.body.native.isVisible()
    assert "▸" in adv.toggle.text and adv.toggle.text.startswith("More")

    adv.toggle.native.click()
    assert adv.expanded is True
    assert adv.body.native.isVisible() and spin.native.isVisible()
    assert "▾" in adv.toggle.text

    adv.expanded = False
    assert not spin.native.isVisible()
    spin.value = 5  # values are read and set whether the section is open or not
    assert spin.value == 5
