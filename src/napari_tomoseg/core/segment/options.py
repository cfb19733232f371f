"""Inference options: what the user asks for, and every option decided once for one volume.

InferenceConfig (``None`` = the model's default) + model + volume shape + device
-> :func:`resolve` (mode check, tile, overlap, stitching, memory plan) -> :class:`ResolvedInference`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from napari_tomoseg.core.model import AXES, MODES, Mode, TomosegModel, check_mode
from napari_tomoseg.core.segment.device import Precision
from napari_tomoseg.core.segment.memory import gpu_batch, plan_memory
from napari_tomoseg.core.segment.tiling import ORTHO_TILE, plane_tiling

Stitch = Literal["auto", "valid", "blend"]


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a model over a volume. ``None`` fields take the model file's defaults.

    Parameters
    ----------
    mode : {"2d", "2d-3axes", "2.5d", "3d"}
        2D slice-wise along ``axis``; 2D along all three axes with probabilities averaged;
        2.5D (k neighbouring slices as channels); 3D blocks.
    axis : {"z", "y", "x"}
        Slicing axis for 2D and 2.5D.
    tile, overlap : int
        Tile edge and overlap in voxels (in-plane for 2D, cubic for 3D). With valid-region
        stitching (2D, 2.5D) ``tile`` is the edge of the region each tile keeps and the network
        sees ``overlap // 2`` more on every side.
    batch_size : int, optional
        Tiles per forward pass. When None: 1 on the CPU (fastest there), on a GPU from its free
        memory (or from ``memory``).
    block : int, optional
        Slices per slab (2D, 2.5D, multi-axis), per 3D slab, or edge of the cubic blocks of the
        blended multi-axis mode; bounds memory.
        Chosen from ``memory`` when None.
    memory : int, optional
        Memory budget in bytes for the whole process (see :func:`parse_memory`); picks ``block``
        and ``batch_size``. Too small for one tile: a ValueError names the minimum.
    stitch : {"auto", "valid", "blend"}
        How tiles are joined: ``valid`` keeps each tile's centre (no blending; 2D, 2.5D and
        multi-axis), ``blend`` averages overlapping tiles with linear ramps.
        ``auto``: valid for 2D, 2.5D and multi-axis, blend for 3D.
    ring_removal : bool, optional
        Subtract CT ring artifacts before segmenting (when the volume has any); None: as the model
        was trained (its normalisation's ``ring_removal``).
    tta : bool, optional
        Test-time augmentation: average the probabilities over the symmetries of each tile (8 in
        2D and 2.5D, the 8 flips in 3D; see :func:`~.predictor.tta_symmetries`): 8 times the
        network time, smoother labels. None: the model file's default (off unless it records it).
    """

    mode: Mode | None = None
    axis: str | None = None
    tile: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    block: int | None = None
    device: str = "auto"
    precision: Precision = "auto"
    memory: int | None = None
    stitch: Stitch = "auto"
    ring_removal: bool | None = None
    tta: bool | None = None

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.axis is not None and self.axis not in AXES:
            raise ValueError(f"axis must be one of {tuple(AXES)}, got {self.axis!r}")
        if self.tile is not None and (self.tile < 8 or self.tile % 8):
            raise ValueError(
                f"tile must be a multiple of 8 and at least 8 (the network's minimum), got {self.tile}"
            )
        if self.overlap is not None and self.overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {self.overlap}")
        if self.tile is not None and self.overlap is not None and self.overlap > self.tile // 2:
            raise ValueError(f"overlap {self.overlap} must be at most half the tile ({self.tile})")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.block is not None and self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")
        if self.memory is not None and self.memory <= 0:
            raise ValueError(f"memory must be a positive number of bytes, got {self.memory}")
        if self.stitch not in ("auto", "valid", "blend"):
            raise ValueError(f"stitch must be auto, valid or blend, got {self.stitch!r}")
        if self.tta is not None and not isinstance(self.tta, bool):
            raise ValueError(f"tta must be True, False or None, got {self.tta!r}")


@dataclass(frozen=True)
class ResolvedInference:
    """An :class:`InferenceConfig` with every option decided (:func:`resolve`); ``axis`` is 0, 1, 2."""

    mode: Mode
    axis: int
    tile: int
    overlap: int
    batch_size: int
    block: int
    stitch: Literal["valid", "blend"] = "blend"
    memory_estimate: int | None = None  # bytes, when a budget was given
    tta: bool = False


def resolve_tta(config: InferenceConfig, model: TomosegModel) -> bool:
    """Whether test-time augmentation runs: the config's ``tta``, else the model's default."""
    return model.defaults.tta if config.tta is None else config.tta


def resolve(
    config: InferenceConfig,
    model: TomosegModel,
    shape: tuple[int, ...],
    *,
    itemsize: int = 1,
    probabilities: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> ResolvedInference:
    """Fill ``None`` fields from the model's defaults (and the memory budget) and check they fit."""
    d = model.defaults
    cfg = model.config
    mode = check_mode(config.mode or d.mode, cfg, default=d.mode)
    tile = config.tile or d.tile
    if tile % cfg.multiple:
        raise ValueError(
            f"tile {tile} must be a multiple of {cfg.multiple} for this network (depth {cfg.depth})"
        )
    overlap = d.overlap if config.overlap is None else config.overlap
    overlap = min(overlap, tile // 2)
    stitch: Literal["valid", "blend"]
    if config.stitch == "auto":
        stitch = "valid" if mode in ("2d", "2.5d", "2d-3axes") else "blend"
    elif config.stitch == "valid" and mode == "3d":
        raise ValueError("stitch 'valid' works for the 2d, 2.5d and 2d-3axes modes, not '3d'")
    else:
        stitch = config.stitch
    # The multi-axis mode slices along all three axes and streams z-slabs: its axis is z.
    axis = 0 if mode == "2d-3axes" else AXES[config.axis or d.axis]
    batch = config.batch_size
    if batch is None and device is not None and device.type == "cuda":
        # GPU memory, not the host budget, limits the batch on a GPU.
        size = tile + overlap
        batch = gpu_batch(model, device, size**cfg.ndim, dtype)
    plan = plan_memory(
        model,
        shape,
        mode=mode,
        axis=axis,
        tile=tile,
        overlap=overlap,
        stitch=stitch,
        itemsize=itemsize,
        budget=config.memory,
        probabilities=probabilities,
        device=device,
        block=config.block,
        batch_size=batch,
    )
    block = plan.block
    if mode == "2d-3axes" and stitch == "valid" and config.block is None:
        # Slabs as deep as a whole number of z-tiles of the y and x passes: no tile computed twice.
        cz = plane_tiling(shape[0], ORTHO_TILE, overlap // 2, cfg.multiple)[1]
        if block >= cz:
            block = block // cz * cz
    return ResolvedInference(
        mode,
        axis,
        tile,
        overlap,
        plan.batch_size,
        block,
        stitch,
        plan.estimate if config.memory is not None else None,
        resolve_tta(config, model),
    )
