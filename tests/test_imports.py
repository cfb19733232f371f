"""The core never imports napari or Qt; importing the package or its core does not import torch."""

import subprocess
import sys

import pytest

GUI = (
    "napari",
    "qtpy",
    "PyQt5",
    "PyQt6",
    "PySide2",
    "PySide6",
    "magicgui",
    "superqt",
    "vispy",
    "matplotlib",
    "tkinter",
)
#: ``import torch`` loads ``torch.hub``, which imports tqdm when it is installed (the CLI's progress
#: bars need it); tqdm's ``__init__`` imports its ``gui`` module, which loads no toolkit
#: (matplotlib only when a GUI bar is made). The only module named like a GUI the core may load.
TORCH_LOADS = {"tqdm.gui"}


def _full_modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def _modules_after(code: str) -> set[str]:
    return {m.split(".")[0] for m in _full_modules_after(code)}


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


def test_using_the_core_loads_no_gui_toolkit():
    # Load the bundled model (model files, network, normalisation) and plan a fine-tune: what a
    # headless script does. No toolkit, and no module named like a GUI but the one torch brings.
    code = (
        "import numpy as np\n"
        "from napari_tomoseg.core.model import bundled_model_path, load_model\n"
        "from napari_tomoseg.core.learn.finetune import plan_finetune\n"
        "import napari_tomoseg.core.learn.parallel\n"
        "model = load_model(bundled_model_path())\n"
        "ann = np.zeros((4, 32, 32), np.uint8); ann[1, :, :16] = 1; ann[1, :, 16:] = 2\n"
        "plan_finetune(ann.shape, ann, base=model)"
    )
    full = _full_modules_after(code)
    assert "torch" in full
    assert not {m.split(".")[0] for m in full} & set(GUI)
    assert {m for m in full if "gui" in m.lower().split(".")} <= TORCH_LOADS
