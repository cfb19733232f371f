"""What the widgets of a viewer share (state and signals), the model chooser that follows it, and the
recent-models list."""

from __future__ import annotations

import numpy as np
import pytest

from napari_tomoseg._napari.files import recent_models, remember_model
from napari_tomoseg._napari.models import (
    BUNDLED,
    ModelChooser,
    bundled_path,
    info_of,
    read_model_header,
)
from napari_tomoseg._napari.state import state_for
from napari_tomoseg.core.phases import COMPOSITE_PHASES


def test_state_is_per_viewer_and_signals_changes(make_napari_viewer):
    a, b = make_napari_viewer(), make_napari_viewer()
    sa = state_for(a)
    assert sa is state_for(a) and sa is not state_for(b)
    seen = []
    sa.models_changed.connect(lambda: seen.append("models"))
    sa.finetuned.connect(lambda r: seen.append(("finetuned", r)))
    sa.add_model("m", object())
    sa.set_finetune("result")
    assert seen == ["models", ("finetuned", "result")] and sa.last_finetune == "result"
    assert state_for(b).models == {}


def test_model_chooser_lists_models_in_memory_and_files(make_napari_viewer, qtbot, tmp_path):
    from napari_tomoseg.core.model import load_model, save_model

    viewer = make_napari_viewer()
    state = state_for(viewer)
    chooser = ModelChooser(state)
    qtbot.addWidget(chooser.native)
    assert chooser.value == BUNDLED
    info = chooser.info()
    assert info.phases == COMPOSITE_PHASES and (info.ndim, info.in_channels) == (2, 1)
    changes = []
    chooser.model_changed.connect(changes.append)

    bundled = load_model(bundled_path())
    state.add_model("fine-tuned 1", bundled)  # every chooser of the viewer lists it
    assert "memory:fine-tuned 1" in chooser.combo.choices and chooser.value == BUNDLED
    chooser.select_memory("fine-tuned 1")
    assert chooser.value == "memory:fine-tuned 1" and changes == ["memory:fine-tuned 1"]
    assert chooser.loader()() is bundled and chooser.info() == info_of(bundled)
    with pytest.raises(KeyError):
        chooser.select_memory("nothing")

    path = save_model(tmp_path / "mine.safetensors", bundled)
    chooser.set_file(path)
    assert chooser.value == str(path.resolve()) and chooser.info().tile == info.tile
    chooser.loader()  # a file used is remembered
    assert recent_models() == [path.resolve()]
    (tmp_path / "notes.safetensors").write_bytes(np.zeros(16, np.uint8).tobytes())
    with pytest.raises(ValueError, match="not a napari-tomoseg model file"):
        chooser.set_file(tmp_path / "notes.safetensors")
    with pytest.raises(ValueError, match="not a napari-tomoseg model file"):
        read_model_header(tmp_path / "missing.safetensors")


def test_recent_models_round_trip(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    remember_model(a)
    remember_model(b)
    remember_model(a)
    assert recent_models() == [a.resolve(), b.resolve()]
    b.unlink()
    assert recent_models() == [a.resolve()]
