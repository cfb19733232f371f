"""The ``model`` room: the modular U-Net, self-describing model files, and the vocabulary of modes.

modes.py (no torch): MODES, AXES, which modes a network runs, which a fine-tune makes.
network.py: UNetConfig -> ModularUNet.  files.py: TomosegModel <-> one ``.safetensors`` file.

May import: ``core.phases``, ``core.prep`` (the normalisation a model carries). Never ``segment``,
``learn``, ``measure`` or any front end. The network and file names load on first use, so that
importing the mode vocabulary (e.g. to fill a GUI's choices) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from napari_tomoseg.core.model.modes import (
    AXES,
    AXIS_NAMES,
    MODES,
    TRAIN_MODES,
    Axis,
    Mode,
    TrainMode,
    axis_index,
    check_mode,
    finetuned_mode,
    mode_family,
    runnable_modes,
)

if TYPE_CHECKING:
    from napari_tomoseg.core.model.files import (
        BUNDLED_MODEL,
        FORMAT,
        InferenceDefaults,
        ModelFileError,
        TomosegModel,
        bundled_model_path,
        load_model,
        save_model,
    )
    from napari_tomoseg.core.model.network import (
        Block,
        ModularUNet,
        UNetConfig,
        count_parameters,
        inflate_to_slices,
        receptive_halo,
    )

#: Public name -> the module that defines it (imported when the name is first used).
_LAZY = {
    **dict.fromkeys(
        (
            "BUNDLED_MODEL",
            "FORMAT",
            "InferenceDefaults",
            "ModelFileError",
            "TomosegModel",
            "bundled_model_path",
            "load_model",
            "save_model",
        ),
        "napari_tomoseg.core.model.files",
    ),
    **dict.fromkeys(
        (
            "Block",
            "ModularUNet",
            "UNetConfig",
            "count_parameters",
            "inflate_to_slices",
            "receptive_halo",
        ),
        "napari_tomoseg.core.model.network",
    ),
}

__all__ = [
    "AXES",
    "AXIS_NAMES",
    "BUNDLED_MODEL",
    "FORMAT",
    "MODES",
    "TRAIN_MODES",
    "Axis",
    "Block",
    "InferenceDefaults",
    "Mode",
    "ModelFileError",
    "ModularUNet",
    "TomosegModel",
    "TrainMode",
    "UNetConfig",
    "axis_index",
    "bundled_model_path",
    "check_mode",
    "count_parameters",
    "finetuned_mode",
    "inflate_to_slices",
    "load_model",
    "mode_family",
    "receptive_halo",
    "runnable_modes",
    "save_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
