"""The memory plan: block (slices per slab, or block edge) and batch sizes that fit a budget.

budget (``--memory 2GB``, :func:`parse_memory`) + model + volume shape + mode -> per-slab and per-tile
bytes (measured constants below) -> :class:`MemoryPlan` (block, batch, expected peak, minimum);
without a budget, the defaults that are fastest on the device.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import torch

from napari_tomoseg.core.checks import format_bytes
from napari_tomoseg.core.model import Mode, TomosegModel
from napari_tomoseg.core.segment.tiling import ORTHO_GROUP, ORTHO_TILE, plane_shape, plane_tiling

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_IUNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}

#: Python + torch + a model, before any data: about 250-300 MB measured on Linux (CPU build).
RUNTIME_BYTES = 350 * 10**6
#: Peak activation bytes per tile voxel per base filter of the ModularUNet in fp32 channels-last,
#: measured with ru_maxrss on CPU (56-72 for F = 6 and 16, 544^2 and 1088^2 tiles); rounded up.
_ACTIVATION_BYTES_PER_FILTER = 80
#: Slices per 2D slab at most: 8 on the CPU (one tile per pass, so bigger slabs gain nothing and the
#: reader thread's second slab costs memory), 32 on a GPU (tiles of several slices fill a batch).
_MAX_BLOCK_2D = 8
_MAX_BLOCK_2D_GPU = 32
#: Slab depth cap of the multi-axis mode on the CPU (4x on a GPU).
_MAX_BLOCK_3AXES = 64
#: On the CPU one tile per forward pass is fastest: measured on 2 cores with the bundled model and
#: 544^2 tiles, 0.31 s per tile at batch 1, 0.36 at 2 and 0.42 at 4 (activations fall out of cache).
_CPU_BATCH = 1


def parse_memory(text: str | int) -> int:
    """Bytes from a size such as ``2GB``, ``1.5 GiB``, ``800M`` or ``512MB`` (an int is bytes).

    ``kB``/``MB``/``GB``/``TB`` are decimal (10^9 bytes per GB); ``KiB``/``MiB``/``GiB``, and the bare
    letters ``K``/``M``/``G``/``T``, are binary (2^30 bytes per G).
    """
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)([bB]?)\s*", str(text))
        if not m:
            raise ValueError(
                f"memory budget {text!r} is not a size; write it like 2GB, 1.5GiB or 800MB"
            )
        number, unit, binary, b = m.groups()
        unit = unit.lower()
        if binary or (unit and not b):
            factor = _IUNITS[unit] if unit else 1
        else:
            factor = _UNITS[unit]
        value = int(float(number) * factor)
    if value <= 0:
        raise ValueError(f"memory budget must be positive, got {text!r}")
    return value


@dataclass(frozen=True)
class MemoryPlan:
    """Block and batch sizes that fit a budget, with the expected peak and the smallest budget."""

    block: int
    batch_size: int
    estimate: int
    minimum: int


def plan_memory(
    model: TomosegModel,
    shape: tuple[int, ...],
    *,
    mode: Mode,
    axis: int,
    tile: int,
    overlap: int,
    stitch: Literal["valid", "blend"],
    itemsize: int,
    budget: int | None,
    probabilities: bool = False,
    device: torch.device | None = None,
    block: int | None = None,
    batch_size: int | None = None,
) -> MemoryPlan:
    """Choose block (slices per slab or block edge) and batch size so the peak stays in ``budget``.

    The estimate counts the runtime (:data:`RUNTIME_BYTES`), the slab or block being read (twice:
    the reader thread loads the next one during compute), its float32 copies, the per-slab
    outputs and the network's activations per tile. Fixed ``block`` / ``batch_size`` are kept.

    Raises
    ------
    ValueError
        If ``budget`` is smaller than one slice or block with a single tile needs (the message
        gives the minimum).
    """
    cfg = model.config
    c, k, f = cfg.n_phases, cfg.in_channels, cfg.base_filters
    on_host = device is None or device.type == "cpu"
    probs = 22 * c if probabilities else 0  # float32 + float16 copy + entropy temporaries
    cube = False
    per_vox = 0
    if mode in ("2d", "2.5d"):
        h, w = plane_shape(shape, axis)
        plane = h * w
        if stitch == "valid":
            halo = overlap // 2
            ys, cy, sy = plane_tiling(h, tile, halo, cfg.multiple)
            xs, cx, sx = plane_tiling(w, tile, halo, cfg.multiple)
            padded = (cy * len(ys) + sy - cy) * (cx * len(xs) + sx - cx)
            # read + normalised float32 + padded k-channel stack, twice (the reader thread
            # prefetches the next slab); labels twice (one slab in flight to the writer).
            per_unit = 2 * (plane * (itemsize + 4) + k * padded * 4) + 2 * plane + plane * probs
            tile_vox = sy * sx
        else:
            padded = (h + 2 * overlap + tile) * (w + 2 * overlap + tile)
            per_unit = padded * (itemsize + 4 + 4 * k + 4 * c + 4 + 8 + 2 + probs)
            tile_vox = tile * tile
        fixed = 2 * (k - 1) * plane * (itemsize + 4)  # 2.5D neighbours beyond the slab
        max_units, cap = shape[axis], (_MAX_BLOCK_2D if on_host else _MAX_BLOCK_2D_GPU)
    elif mode == "2d-3axes" and stitch == "valid":
        h, w = shape[1], shape[2]
        plane = h * w
        halo = max(overlap // 2, k // 2)
        _, cz, sz = plane_tiling(shape[0], ORTHO_TILE, halo, cfg.multiple)
        # per slab slice: the window read and normalised (twice: prefetch), the z-pass input
        # (k channels) and probabilities, the accumulator, labels. Fixed: the window's rows beyond
        # the slab (the z-halo of the y and x passes, twice) and one group of y- or x-slices in
        # flight.
        per_unit = plane * (2 * (itemsize + 4) + 4 * k + 8 * c + 2 + probs)
        fixed = 2 * (sz - cz) * plane * (itemsize + 4)
        fixed += ORTHO_GROUP * max(h, w) * (cz + sz) * (4 * k + 4 * c)
        tile_vox = max(
            plane_tiling(h, tile, halo, cfg.multiple)[2]
            * plane_tiling(w, tile, halo, cfg.multiple)[2],
            sz * plane_tiling(max(h, w), tile, halo, cfg.multiple)[2],
        )
        max_units, cap = shape[0], (_MAX_BLOCK_3AXES if on_host else 4 * _MAX_BLOCK_3AXES)
    else:
        c_mult = 3 if mode == "2d-3axes" else 1
        # raw, float32, padded, blended out (+ multi-axis accumulators), weights, int64 argmax
        per_vox = itemsize + 8 + 4 * c * c_mult + 4 + 8 + 2 + probs
        if mode == "3d":
            plane = (shape[1] + 2 * overlap + tile) * (shape[2] + 2 * overlap + tile)
            per_unit, fixed, max_units = per_vox * plane, per_vox * plane * 2 * overlap, shape[0]
            tile_vox = tile**3
        else:
            cube, per_unit, fixed, max_units = True, 0, 0, max(shape)
            tile_vox = tile**2
        cap = 128
    net_per_tile = tile_vox * (
        (f * _ACTIVATION_BYTES_PER_FILTER if on_host else 0) + 4 * (k + 2 * c)
    )

    def total(units: int, batch: int) -> int:
        if cube:
            data = per_vox * (min(units, max_units) + 2 * overlap) ** 3
        else:
            data = fixed + units * per_unit
        return RUNTIME_BYTES + data + batch * net_per_tile

    minimum = total(1 if block is None else block, 1 if batch_size is None else batch_size)
    if budget is not None and budget < minimum:
        raise ValueError(
            f"memory budget {format_bytes(budget)} is too small for one tile of this volume and "
            f"model: at least {format_bytes(minimum)} is needed (--memory "
            f"{math.ceil(minimum / 1e8) / 10:.1f}GB), or use a smaller --tile"
        )
    if budget is None:
        b = batch_size or (_CPU_BATCH if on_host else 4)
        if mode in ("2d", "2.5d"):
            u = block or 8
        elif mode == "2d-3axes" and stitch == "valid":
            u = block or max(1, min(cap, max_units, 2**26 // max(1, plane)))
        else:
            u = block or (64 if mode == "3d" else 96)
        return MemoryPlan(u, b, total(u, b), minimum)
    if batch_size is not None:
        b = batch_size
    else:
        b_cap = _CPU_BATCH if on_host else 64
        spare = budget - total(1 if block is None else block, 0)
        b = int(max(1, min(b_cap, spare * 0.4 // max(1, net_per_tile))))
    if block is not None:
        u = block
    else:
        u = 1
        while u < min(cap, max_units) and total(u + 1, b) <= budget:
            u += 1
    est = total(u, b)
    if est > budget:
        raise ValueError(
            f"memory budget {format_bytes(budget)} is too small for block {u} and batch {b}: "
            f"about {format_bytes(est)} is needed; raise --memory or leave the block and batch "
            "size to be chosen from the budget"
        )
    return MemoryPlan(u, b, est, minimum)


def gpu_batch(model: TomosegModel, device: torch.device, tile_vox: int, dtype: torch.dtype) -> int:
    """Tiles per batch that fit in half the GPU's free memory (activations per voxel measured on CPU)."""
    if device.type != "cuda":
        return 4
    free, _total = torch.cuda.mem_get_info(device)
    per = tile_vox * model.config.base_filters * _ACTIVATION_BYTES_PER_FILTER
    if dtype != torch.float32:
        per //= 2
    return int(max(1, min(64, free * 0.5 // max(1, per))))
