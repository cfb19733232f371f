"""The core never imports napari or Qt; importing the package or its core does not import torch."""

import subprocess
import sys

import pytest

GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {m.split(".")[0] for m in out.split()}


@pytest.mark.parametrize("module", ["napari_tomoseg", "napari_tomoseg.core"])
def test_light_imports(module):
    loaded = _modules_after(f"import {module}")
    assert "torch" not in loaded
    assert not loaded & set(GUI)


def test_whole_core_imports_no_gui():
    # Every module of every room, found by walking the package (a new module is checked too).
    walk = (
        "import importlib, pkgutil, napari_tomoseg.core as core\n"
        "for info in pkgutil.walk_packages(core.__path__, 'napari_tomoseg.core.'):\n"
        "    importlib.import_module(info.name)\n"
        "import napari_tomoseg.cli"
    )
    loaded = _modules_after(walk)
    assert "torch" in loaded  # sanity: the heavy modules were really imported
    assert not loaded & set(GUI), loaded & set(GUI)
