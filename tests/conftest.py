"""Helpers shared by every test folder.

- ``fails(argv, match)``: run ``tomoseg ARGV`` in-process and assert it fails with exit code 1 and
  one line on stderr that starts with ``tomoseg: error:`` and contains ``match``.
- Tests that need a Qt application (napari viewers, widgets) are skipped, with the reason, on a Linux
  machine with no display and no Xvfb for pytest-xvfb to start: Qt would abort the whole run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import pytest

#: Fixtures that create a QApplication.
_QT_FIXTURES = {"qapp", "qtbot", "make_napari_viewer", "make_napari_viewer_proxy"}


def _no_display() -> bool:
    """Linux with nowhere to draw: no X or Wayland display (pytest-xvfb sets DISPLAY when it
    starts Xvfb) and no Qt platform chosen by the user (e.g. ``QT_QPA_PLATFORM=offscreen``)."""
    if not sys.platform.startswith("linux"):
        return False
    return not any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _no_display():
        return
    skip = pytest.mark.skip(
        reason="needs a display: no DISPLAY and no Xvfb for pytest-xvfb to start "
        "(Debian/Ubuntu: apt-get install xvfb libgl1-mesa-dri)"
    )
    for item in items:
        if _QT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


@pytest.fixture
def fails(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str], str], str]:
    from napari_tomoseg.cli import main

    def check(argv: Sequence[str], match: str) -> str:
        capsys.readouterr()
        assert main(list(argv)) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("tomoseg: error:") and "\n" not in err, err
        assert match in err, err
        return err

    return check
