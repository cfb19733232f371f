"""Pure tiling functions: images in, a predictor (any callable on batches) applied tile by tile, out.

:func:`predict_tiled` (blend, in the manner of MONAI's ``sliding_window_inference``): mirror-pad ->
overlapping tiles in batches -> ``predict`` -> linear-ramp weighted blend -> probabilities.
:func:`predict_valid` (valid-region stitching): a :class:`PlaneGrid` of cores with halos -> keep each
tile's core, no blending; :class:`ZGrid` anchors the multi-axis mode's short z-tiles to the volume.

Nothing here knows about models, devices or volumes: the predictor is a parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core.progress import Cancelled, CancelToken

#: A predictor: (N, C_in, *tile) float32 batch -> (N, n_out, *tile) float32 probabilities.
PredictFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]

#: Core length along z of the tiles of the y and x passes of the multi-axis mode (the slab depth is
#: rounded to a multiple of it, so slabs and tiles line up).
ORTHO_TILE = 32
#: The y- or x-slices the multi-axis mode's y and x passes segment together.
ORTHO_GROUP = 16


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``0..length`` with at least ``overlap`` shared.

    Starts are spread evenly, so every overlap is about equal and the last tile ends at ``length``.
    """
    if tile >= length:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def window(tile: int, starts: list[int], index: int, overlap: int) -> npt.NDArray[np.float32]:
    """1D blending weight of tile ``index``: linear ramps over the overlap on sides with a neighbour.

    Ramps never reach zero, so every voxel has positive total weight; weights are normalised later.
    """
    w = np.ones(tile, np.float32)
    if overlap <= 0 or len(starts) == 1:
        return w
    ramp = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    if index > 0:
        w[:overlap] = ramp
    if index < len(starts) - 1:
        w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def pad_width(
    length: int, tile: int, border: int, multiple: int, overlap: int
) -> tuple[int, int, int]:
    """(pad before, pad after, effective tile) so that the padded length is tileable."""
    before = border
    padded = length + 2 * border
    if padded <= tile:
        t = -(-padded // multiple) * multiple
    else:
        # As few tiles as the overlap allows, each shrunk to just cover the length: a fixed tile
        # of 512 on a 1088 line would compute 1536 (3 tiles), a shrunk one 1152 (3 x 384).
        n = math.ceil((padded - overlap) / (tile - overlap))
        t = min(tile, -(-math.ceil((padded + (n - 1) * overlap) / n) // multiple) * multiple)
    after = border + max(0, t - padded)
    return before, after, t


def predict_tiled(
    images: npt.NDArray[np.float32],
    predict: PredictFn,
    *,
    n_out: int,
    tile: int | tuple[int, ...],
    overlap: int,
    batch_size: int = 8,
    multiple: int = 8,
    border: int | None = None,
    cancel: CancelToken | None = None,
) -> npt.NDArray[np.float32]:
    """Predict a stack of images (2D) or blocks (3D) tile by tile and blend the results.

    Parameters
    ----------
    images : (S, C_in, *spatial) float32
        S independent images; spatial is (H, W) for 2D networks, (D, H, W) for 3D ones.
    predict : callable
        Maps a batch (N, C_in, *tile) to (N, n_out, *tile) probabilities.
    tile : int or tuple
        Tile edge (a multiple of ``multiple``); smaller images use one smaller tile.
    overlap : int
        Voxels shared by neighbouring tiles, blended with linear ramps.
    border : int, optional
        Mirror padding added around each image so border voxels get context (default ``overlap``).

    Returns
    -------
    (S, n_out, *spatial) float32 blended probabilities.
    """
    if images.ndim < 4:
        raise ValueError(
            f"images must be (S, C_in, *spatial) with 2 or 3 spatial dims, got shape {images.shape}"
        )
    spatial = images.shape[2:]
    nd = len(spatial)
    tiles = (tile,) * nd if isinstance(tile, int) else tuple(tile)
    if len(tiles) != nd or any(t % multiple or t <= 0 for t in tiles):
        raise ValueError(f"tile {tiles} must be {nd} positive multiples of {multiple}")
    if not 0 <= overlap < min(tiles) // 2 + 1:
        raise ValueError(f"overlap {overlap} must be in 0..{min(tiles) // 2} for tile {tiles}")
    border = overlap if border is None else border
    pads, eff = [], []
    for length, t in zip(spatial, tiles, strict=True):
        b, a, te = pad_width(length, t, border, multiple, overlap)
        pads.append((b, a))
        eff.append(te)
    padded = mirror_pad(images, pads)
    pshape = padded.shape[2:]
    starts = [
        tile_starts(length, t, min(overlap, t // 2)) for length, t in zip(pshape, eff, strict=True)
    ]
    windows = [
        [window(t, st, i, min(overlap, t // 2)) for i in range(len(st))]
        for t, st in zip(eff, starts, strict=True)
    ]
    out = np.zeros((images.shape[0], n_out, *pshape), np.float32)
    wsum = np.zeros(pshape, np.float32)
    grid = list(np.ndindex(*(len(s) for s in starts)))
    for idx in grid:
        region = tuple(slice(starts[a][i], starts[a][i] + eff[a]) for a, i in enumerate(idx))
        wsum[region] += outer([windows[a][i] for a, i in enumerate(idx)])
    jobs = [(s, idx) for s in range(images.shape[0]) for idx in grid]
    for j0 in range(0, len(jobs), batch_size):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("segmentation stopped")
        chunk = jobs[j0 : j0 + batch_size]
        regions = [
            tuple(slice(starts[a][i], starts[a][i] + eff[a]) for a, i in enumerate(idx))
            for _, idx in chunk
        ]
        keys: list[tuple[Any, ...]] = [
            (s, slice(None), *r) for (s, _), r in zip(chunk, regions, strict=True)
        ]
        batch = np.stack([padded[key] for key in keys])
        probs = predict(batch)
        if probs.shape != (len(chunk), n_out, *eff):
            raise ValueError(
                f"predictor returned shape {probs.shape}, expected {(len(chunk), n_out, *eff)}"
            )
        for k, ((_, idx), key) in enumerate(zip(chunk, keys, strict=True)):
            w = outer([windows[a][i] for a, i in enumerate(idx)])
            out[key] += probs[k] * w
    out /= wsum
    crop = tuple(slice(b, b + length) for (b, _), length in zip(pads, spatial, strict=True))
    return out[(slice(None), slice(None), *crop)]


def mirror_pad(
    images: npt.NDArray[np.float32], pads: list[tuple[int, int]]
) -> npt.NDArray[np.float32]:
    """Mirror-pad the spatial axes (2, 3, ...) of ``(S, C, *spatial)`` by ``pads`` (before, after)."""
    spatial = images.shape[2:]
    mode = "reflect" if min(spatial) > 1 else "edge"
    # numpy's reflect needs pad < length; repeat it for tiny images.
    padded = images
    for ax, (b, a) in enumerate(pads):
        while b > 0 or a > 0:
            n = padded.shape[2 + ax] - 1 if mode == "reflect" else max(b, a)
            pb, pa = min(b, n), min(a, n)
            width = [(0, 0)] * padded.ndim
            width[2 + ax] = (pb, pa)
            padded = np.pad(padded, width, mode=mode)  # type: ignore[call-overload]
            b, a = b - pb, a - pa
    return padded


def outer(vectors: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """The outer product of 1D weights: the N-D weight of a tile."""
    w = vectors[0]
    for v in vectors[1:]:
        w = np.multiply.outer(w, v)
    return w


def plane_tiling(length: int, tile: int, halo: int, multiple: int) -> tuple[list[int], int, int]:
    """Valid-region tiling of one axis: (core starts, core edge, input tile edge).

    ``ceil(length / tile)`` cores of equal size cover the axis (the last one ends at ``length``,
    overlapping its neighbour if needed); each input tile adds ``halo`` on both sides and is
    rounded up to ``multiple``. Depends only on ``length``: the grid is anchored to the slice.
    """
    n = max(1, math.ceil(length / tile))
    core = math.ceil(length / n)
    size = -(-(core + 2 * halo) // multiple) * multiple
    starts = [min(i * core, length - core) for i in range(n)]
    return starts, core, size


def plane_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    """The (H, W) of a slice across ``axis`` of a volume of ``shape``."""
    plane = [n for a, n in enumerate(shape) if a != axis]
    return plane[0], plane[1]


@dataclass(frozen=True)
class PlaneGrid:
    """The tile grid of one slice: core starts, core edges and input tile edges per in-plane axis."""

    starts: tuple[list[int], list[int]]
    core: tuple[int, int]
    size: tuple[int, int]
    halo: int

    @classmethod
    def of(cls, plane: tuple[int, int], tile: int, overlap: int, multiple: int) -> PlaneGrid:
        halo = overlap // 2
        (ys, cy, sy), (xs, cx, sx) = (plane_tiling(n, tile, halo, multiple) for n in plane)
        return cls((ys, xs), (cy, cx), (sy, sx), halo)

    @property
    def pads(self) -> list[tuple[int, int]]:
        return [(self.halo, s - c - self.halo) for s, c in zip(self.size, self.core, strict=True)]


def predict_core(
    predict: PredictFn,
    batch: npt.NDArray[np.float32],
    core: tuple[slice, slice],
    n_out: int,
    probabilities: bool,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
    """Labels 0..C-1 (argmax) and optionally probabilities of the ``core`` of each tile of ``batch``.

    A predictor with a ``predict_core`` method (:class:`~.predictor.Predictor`) takes the argmax on
    its device; any other callable is run whole and cropped here.
    """
    on_device = getattr(predict, "predict_core", None)
    if on_device is not None:
        result: tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]
        result = on_device(batch, core, probabilities=probabilities)
        return result
    probs = predict(batch)
    if probs.shape != (len(batch), n_out, *batch.shape[2:]):
        raise ValueError(
            f"predictor returned shape {probs.shape}, expected {(len(batch), n_out, *batch.shape[2:])}"
        )
    probs = probs[(slice(None), slice(None), *core)]
    return probs.argmax(1).astype(np.uint8), probs if probabilities else None


def predict_valid(
    padded: npt.NDArray[np.float32],
    predict: PredictFn,
    grid: PlaneGrid,
    plane: tuple[int, int],
    *,
    n_out: int,
    batch_size: int,
    probabilities: bool,
    cancel: CancelToken | None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
    """Labels 1..C (S, H, W) and optionally probabilities (S, C, H, W) of a padded slab.

    Every batch has exactly ``batch_size`` tiles (the last one is filled with zeros), so that a
    tile's result never depends on which tiles share its batch or on the slab size.
    """
    n_slices = padded.shape[0]
    (ys, xs), (cy, cx), (sy, sx) = grid.starts, grid.core, grid.size
    h = grid.halo
    labels = np.empty((n_slices, *plane), np.uint8)
    probs = np.empty((n_slices, n_out, *plane), np.float32) if probabilities else None
    jobs = [(s, y, x) for s in range(n_slices) for y in ys for x in xs]
    batch = np.zeros((batch_size, padded.shape[1], sy, sx), np.float32)
    core = (slice(h, h + cy), slice(h, h + cx))
    for j0 in range(0, len(jobs), batch_size):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("segmentation stopped")
        chunk = jobs[j0 : j0 + batch_size]
        for n, (s, y, x) in enumerate(chunk):
            batch[n] = padded[s, :, y : y + sy, x : x + sx]
        batch[len(chunk) :] = 0.0
        lab, pr = predict_core(predict, batch, core, n_out, probabilities)
        for n, (s, y, x) in enumerate(chunk):
            labels[s, y : y + cy, x : x + cx] = lab[n]
            if probs is not None and pr is not None:
                probs[s, :, y : y + cy, x : x + cx] = pr[n]
    labels += 1
    return labels, probs


@dataclass(frozen=True)
class ZGrid:
    """The z-tiling of the y and x passes of the multi-axis mode, anchored to the volume.

    ``index[p]`` is the volume row at padded row ``p`` (mirrored at the volume's ends exactly as a
    whole y- or x-slice would be); tile ``i`` reads padded rows ``starts[i] .. starts[i] + size`` and
    keeps volume rows ``starts[i] .. starts[i] + core``.
    """

    starts: list[int]
    core: int
    size: int
    halo: int
    index: npt.NDArray[np.intp]

    @classmethod
    def of(cls, depth: int, overlap: int, multiple: int, context: int = 0) -> ZGrid:
        # a 2.5D network's z-pass reads ``context`` rows beyond each slab slice
        halo = max(overlap // 2, context)
        starts, core, size = plane_tiling(depth, ORTHO_TILE, halo, multiple)
        rows = np.repeat(np.arange(depth, dtype=np.float32)[:, None], 2, axis=1)[None, None]
        index = mirror_pad(rows, [(halo, size - core - halo), (0, 0)])[0, 0, :, 0]
        return cls(starts, core, size, halo, index.astype(np.intp))

    def tiles(self, z0: int, z1: int) -> list[int]:
        """Starts of the tiles whose cores meet rows ``z0 .. z1``."""
        return [s for s in self.starts if s < z1 and s + self.core > z0]


def reflected(i0: int, i1: int, n: int) -> npt.NDArray[np.intp]:
    """Indices ``i0 .. i1`` into an axis of length ``n``, mirrored at its ends (numpy's "reflect",
    repeated for ranges longer than the axis)."""
    i = np.arange(i0, i1)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i < n, i, period - i)


def with_neighbours(rows: npt.NDArray[np.float32], context: int) -> npt.NDArray[np.float32]:
    """(S, 2 context + 1, ...) stacks from (S + 2 context, ...) consecutive slices: each slice
    with its ``context`` neighbours on either side as channels."""
    s = rows.shape[0] - 2 * context
    if not context:
        return rows[:, None]
    return np.stack([rows[c : c + s] for c in range(2 * context + 1)], axis=1)
