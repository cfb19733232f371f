"""Model files are checked before a network is built: metadata types and bounds, tensor shapes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from napari_tomoseg.core.model import ModelFileError, bundled_model_path, load_model, save_model
from napari_tomoseg.core.model.files import check_unet_metadata


def _rewrite(path: Path, unet: dict | None = None, drop: str | None = None, **meta: str) -> Path:
    with safe_open(str(bundled_model_path()), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if unet is not None:
        arch = json.loads(metadata["unet"])
        arch.update(unet)
        metadata["unet"] = json.dumps(arch)
    metadata.update(meta)
    if drop is not None:
        tensors.pop(drop)
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("unet", "match"),
    [
        ({"base_filters": 10**6}, "base_filters must be in 1..1024"),
        ({"in_channels": 10**9}, "in_channels must be in 1..255"),
        ({"depth": 3.5}, "depth must be a whole number"),
        ({"base_filters": 8.5}, "base_filters must be a whole number"),
        ({"n_phases": True}, "n_phases must be a whole number"),
        ({"ndim": 4}, "ndim must be in 2..3"),
        ({"residual": "yes"}, "residual must be true or false"),
        ({"dropout": float("nan")}, "dropout"),
        ({"base_filters": 0}, "base_filters must be in 1..1024"),
    ],
)
def test_lying_architectures_are_refused_naming_the_file(tmp_path, unet, match):
    path = _rewrite(tmp_path / "liar.safetensors", unet=unet)
    with pytest.raises(ModelFileError, match=match) as got:
        load_model(path)
    assert str(path) in str(got.value)


def test_a_plausible_lie_is_caught_by_the_tensor_shapes_before_allocation(tmp_path):
    # 1024 filters, depth 6 would be tens of GB of weights: compared on torch's meta device.
    path = _rewrite(tmp_path / "wide.safetensors", unet={"base_filters": 1024, "depth": 6})
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match="do not match the architecture"):
        load_model(path)
    assert time.perf_counter() - t0 < 10


def test_a_missing_tensor_and_bad_inference_defaults_are_refused(tmp_path):
    with safe_open(str(bundled_model_path()), framework="pt") as f:
        first = next(iter(f.keys()))
    with pytest.raises(ModelFileError, match="missing"):
        load_model(_rewrite(tmp_path / "a.safetensors", drop=first))
    bad = json.dumps({"mode": "2d", "axis": "z", "tile": 256.5, "overlap": 32})
    with pytest.raises(ModelFileError, match="tile must be a whole number"):
        load_model(_rewrite(tmp_path / "b.safetensors", inference=bad))
    with pytest.raises(ModelFileError, match="malformed metadata"):
        load_model(_rewrite(tmp_path / "c.safetensors", unet=None, normalization="[1, 2]"))


def test_check_unet_metadata_accepts_the_bundled_model_s():
    with safe_open(str(bundled_model_path()), framework="pt") as f:
        cfg = check_unet_metadata(json.loads(f.metadata()["unet"]))
    assert cfg == load_model(bundled_model_path()).config


def test_save_model_names_its_temporary_and_removes_stale_ones(tmp_path):
    model = load_model(bundled_model_path())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    from napari_tomoseg.core.io import temp_path

    stale = temp_path(tmp_path / "m.safetensors", "partial").name.replace(
        f"-{os.getpid()}-", f"-{child.pid}-"
    )
    (tmp_path / stale).write_bytes(b"half a model")
    save_model(tmp_path / "m.safetensors", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert load_model(tmp_path / "m.safetensors").config == model.config


def test_save_model_refuses_an_unwritable_folder_before_writing(tmp_path, monkeypatch):
    model = load_model(bundled_model_path())
    monkeypatch.setattr("napari_tomoseg.core.io.write.os.access", lambda *a, **k: False)
    with pytest.raises(PermissionError, match="cannot write"):
        save_model(tmp_path / "m.safetensors", model)
    assert list(tmp_path.iterdir()) == []
