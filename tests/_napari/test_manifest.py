"""The napari manifest: every python_name imports, and opening napari does not import torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import yaml

import napari_tomoseg

MANIFEST = Path(napari_tomoseg.__file__).parent / "napari.yaml"


def _python_names() -> list[str]:
    data = yaml.safe_load(MANIFEST.read_text())
    return [c["python_name"] for c in data["contributions"]["commands"]]


def test_manifest_is_valid_and_namespaced():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    ids = [c.id for c in manifest.contributions.commands]
    assert all(i.startswith("napari-tomoseg.") for i in ids)
    widgets = {w.display_name for w in manifest.contributions.widgets}
    assert {"Segment", "Annotate", "Fine-tune"} <= widgets
    assert manifest.contributions.readers and manifest.contributions.sample_data


def test_every_python_name_imports():
    for name in _python_names():
        module, attr = name.split(":")
        assert callable(getattr(importlib.import_module(module), attr)), name


def test_python_names_do_not_import_torch():
    imports = "\n".join(f"from {n.split(':')[0]} import {n.split(':')[1]}" for n in _python_names())
    code = f"{imports}\nimport sys\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
