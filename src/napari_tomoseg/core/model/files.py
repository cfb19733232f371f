"""Self-describing, pickle-free model files: a network with its phases, normalisation and defaults.

TomosegModel (network + phases + normalisation + inference defaults + provenance)
-> save_model -> one ``.safetensors`` file (weights + JSON metadata) -> load_model -> the same model.

The metadata keys (``format``, ``unet``, ``phases``, ``normalization``, ``inference``,
``provenance``) and :data:`FORMAT` are what every file written so far holds: do not change them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from napari_tomoseg.core.model.modes import AXES, MODES, Mode
from napari_tomoseg.core.model.network import ModularUNet, UNetConfig
from napari_tomoseg.core.phases import PhaseTable
from napari_tomoseg.core.prep.intensity import Normalization

FORMAT = "napari-tomoseg/model/1"
#: The model shipped inside the package (its name is part of the public contract).
BUNDLED_MODEL = "composite-2d.safetensors"


@dataclass(frozen=True)
class InferenceDefaults:
    """How a model wants to be run; ``tomoseg segment`` takes these unless told otherwise."""

    mode: Mode = "2d"
    axis: str = "z"
    tile: int = 256
    overlap: int = 32
    #: Test-time augmentation by default; files written before it existed load with False.
    tta: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.axis not in AXES:
            raise ValueError(f"axis must be one of {tuple(AXES)}, got {self.axis!r}")
        if self.tile < 8:
            raise ValueError(f"tile must be >= 8, got {self.tile}")
        if not 0 <= self.overlap <= self.tile // 2:
            raise ValueError(
                f"overlap must be in 0..{self.tile // 2} for tile {self.tile}, got {self.overlap}"
            )
        if not isinstance(self.tta, bool):
            raise ValueError(f"tta must be true or false, got {self.tta!r}")


@dataclass
class TomosegModel:
    """A network with everything needed to use it on a new volume."""

    network: ModularUNet
    phases: PhaseTable
    normalization: Normalization = field(default_factory=Normalization)
    defaults: InferenceDefaults = field(default_factory=InferenceDefaults)
    provenance: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the file it was loaded from, if any

    def __post_init__(self) -> None:
        cfg = self.network.cfg
        if cfg.n_phases != len(self.phases):
            raise ValueError(
                f"network predicts {cfg.n_phases} phases but the phase table has {len(self.phases)}"
            )
        if self.defaults.mode == "3d" and cfg.ndim != 3:
            raise ValueError("mode '3d' needs a 3D network (UNetConfig.ndim=3)")
        if self.defaults.mode != "3d" and cfg.ndim != 2:
            raise ValueError(f"mode {self.defaults.mode!r} needs a 2D network (UNetConfig.ndim=2)")
        mode, k = self.defaults.mode, cfg.in_channels
        if (mode == "2.5d" and k == 1) or (mode in ("2d", "3d") and k > 1):
            raise ValueError(
                f"mode {mode!r} does not match a network with {k} input channels (2.5D models "
                "take k > 1 neighbouring slices as channels, 2D and 3D ones 1; the multi-axis "
                "mode takes either)"
            )

    @property
    def config(self) -> UNetConfig:
        return self.network.cfg

    def with_defaults(self, **changes: Any) -> TomosegModel:
        return replace(self, defaults=replace(self.defaults, **changes))


def save_model(
    path: str | os.PathLike[str], model: TomosegModel, *, overwrite: bool = False
) -> Path:
    """Write ``model`` to one ``.safetensors`` file (weights + JSON metadata), atomically.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"model files end in .safetensors, got {path.name!r}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it first")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.network.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "unet": json.dumps(asdict(model.config)),
        "phases": json.dumps(model.phases.to_json()),
        "normalization": json.dumps(asdict(model.normalization)),
        "inference": json.dumps(inference_metadata(model.defaults)),
        "provenance": json.dumps(model.provenance, default=str),
    }
    # io (zarr, tifffile) only when a model is saved: loading a model never needs it.
    from napari_tomoseg.core.io.write import (
        check_writable_folder,
        remove_stale_temporaries,
        temp_path,
    )

    check_writable_folder(path.parent)
    remove_stale_temporaries(path.parent)  # model files a killed run left half-written
    # A recognisable temporary name (process and machine in it), renamed only when complete.
    tmp = temp_path(path, "partial")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def inference_metadata(defaults: InferenceDefaults) -> dict[str, Any]:
    """The ``inference`` metadata of a model file: ``tta`` only when on, so a file without test-time
    augmentation stays readable by versions that predate it (they refuse unknown keys)."""
    d = asdict(defaults)
    if not d["tta"]:
        del d["tta"]
    return d


class ModelFileError(ValueError):
    """A model file that cannot be used: corrupt, truncated, not ours, or inconsistent."""


def load_model(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> TomosegModel:
    """Load a model file written by :func:`save_model`. Never unpickles.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ModelFileError
        If it is truncated or corrupt, lacks our metadata, or its weights do not match its architecture.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ModelFileError(
                    f"{path}: not a napari-tomoseg model (metadata 'format' is "
                    f"{meta.get('format')!r}, expected {FORMAT!r})"
                )
            cfg, phases, normalization, defaults, provenance = _read_metadata(path, meta)
            # The architecture is checked against the file's tensors before anything is built:
            # metadata that lies (a huge width) must not allocate a huge network.
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            _check_shapes(path, cfg, stored)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelFileError(
            f"{path}: not a readable .safetensors model file ({err}); it may be truncated or corrupt"
        ) from err
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(
                f"{path}: tensor {k!r} holds NaN or inf; the model is broken (retrain it)"
            )
    network = ModularUNet(cfg)
    network.load_state_dict(tensors)
    network.eval().to(device)
    try:
        return TomosegModel(network, phases, normalization, defaults, provenance, source=path)
    except ValueError as err:
        raise ModelFileError(f"{path}: inconsistent metadata ({err})") from err


#: Bounds of the architecture a model file may declare: far beyond any useful network, far below
#: what would exhaust memory before the file's tensors are compared with it.
_UNET_INT_BOUNDS = {
    "ndim": (2, 3),
    "in_channels": (1, 255),
    "n_phases": (1, 254),
    "depth": (1, 6),
    "base_filters": (1, 1024),
}
_UNET_BOOLS = ("residual", "batch_norm")


def check_unet_metadata(d: Any) -> UNetConfig:
    """The :class:`UNetConfig` a model file's ``unet`` metadata declares, checked field by field.

    Integers must be integers (not 3.5, not ``true``) within sane bounds, flags booleans, dropout
    a number in [0, 1).

    Raises
    ------
    ValueError
        Naming the first bad field.
    """
    if not isinstance(d, dict):
        raise ValueError(f"'unet' must be a JSON object, got {type(d).__name__}")
    for key, (lo, hi) in _UNET_INT_BOUNDS.items():
        if key not in d:
            continue
        v = d[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"unet {key} must be a whole number, got {v!r}")
        if not lo <= v <= hi:
            raise ValueError(f"unet {key} must be in {lo}..{hi}, got {v}")
    for key in _UNET_BOOLS:
        if key in d and not isinstance(d[key], bool):
            raise ValueError(f"unet {key} must be true or false, got {d[key]!r}")
    if "dropout" in d:
        v = d["dropout"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ValueError(f"unet dropout must be a number in [0, 1), got {v!r}")
    return UNetConfig.from_json(d)


def _read_metadata(
    path: Path, meta: dict[str, str]
) -> tuple[UNetConfig, PhaseTable, Normalization, InferenceDefaults, dict[str, Any]]:
    try:
        cfg = check_unet_metadata(json.loads(meta["unet"]))
        phases = PhaseTable.from_json(json.loads(meta["phases"]))
        normalization = Normalization(**_json_object(meta.get("normalization", "{}")))
        inference = _json_object(meta.get("inference", "{}"))
        for key in ("tile", "overlap"):
            v = inference.get(key)
            if key in inference and (isinstance(v, bool) or not isinstance(v, int)):
                raise ValueError(f"inference {key} must be a whole number, got {v!r}")
        defaults = InferenceDefaults(**inference)
        provenance = json.loads(meta.get("provenance", "{}"))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ModelFileError(f"{path}: malformed metadata ({err})") from err
    return cfg, phases, normalization, defaults, provenance


def _json_object(text: str) -> dict[str, Any]:
    d = json.loads(text)
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    return d


def _check_shapes(path: Path, cfg: UNetConfig, stored: dict[str, tuple[int, ...]]) -> None:
    """Compare the tensors the architecture needs (computed on torch's meta device: no memory)
    with the tensors in the file; ModelFileError naming the first differences."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ModularUNet(cfg).state_dict().items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
    if missing or unexpected or wrong:
        detail = "; ".join(
            s
            for s in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                "wrong shape "
                + ", ".join(f"{k} {stored[k]} instead of {expected[k]}" for k in wrong[:3])
                if wrong
                else "",
            )
            if s
        )
        raise ModelFileError(
            f"{path}: weights do not match the architecture in its metadata ({detail})"
        )


def bundled_model_path() -> Path:
    """Path of the model shipped inside the package."""
    # src/napari_tomoseg/core/model/files.py -> src/napari_tomoseg/models/
    return Path(__file__).resolve().parents[2] / "models" / BUNDLED_MODEL
