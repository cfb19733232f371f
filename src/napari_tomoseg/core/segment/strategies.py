"""One strategy per mode: how a region of the volume is read (``load``) and segmented (``compute``).

:func:`region_grid` cuts the volume into regions (slabs of slices, z-slabs, or cubes);
:func:`strategy_for` picks a strategy: :class:`SliceStrategy` (2D / 2.5D, valid-region stitching),
:class:`MultiAxisStrategy` (2D on three axes, valid) or :class:`BlendStrategy` (3D and every blended mode).
``load(region)`` runs in the reader thread; ``compute(region, data)`` returns labels 1..C (uint8) and
the region's probabilities (C, ...) when asked for (``None`` otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from napari_tomoseg.core.checks import FiniteCheckedVolume, check_finite
from napari_tomoseg.core.prep.intensity import apply_range
from napari_tomoseg.core.progress import CancelToken
from napari_tomoseg.core.segment.options import ResolvedInference
from napari_tomoseg.core.segment.tiling import (
    ORTHO_GROUP,
    PlaneGrid,
    PredictFn,
    ZGrid,
    mirror_pad,
    plane_shape,
    plane_tiling,
    predict_tiled,
    predict_valid,
    reflected,
    with_neighbours,
)

Region = tuple[slice, slice, slice]
Computed = tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]


class Strategy(Protocol):
    """What the driver needs of a mode: read a region, then segment what was read."""

    def load(self, region: Region) -> Any: ...

    def compute(
        self, region: Region, data: Any, *, probabilities: bool, cancel: CancelToken | None
    ) -> Computed: ...


@dataclass(frozen=True)
class NetworkInfo:
    """What a strategy needs of the network: phases out, channels in, and the size multiple."""

    n_out: int
    in_channels: int
    multiple: int


@dataclass
class SliceStrategy:
    """2D and 2.5D with valid-region stitching: a slab of slices along ``settings.axis``, padded
    once, cut into tiles on a grid anchored to the slice."""

    volume: Any
    settings: ResolvedInference
    predict: PredictFn
    net: NetworkInfo
    grey_range: tuple[float, float]
    grid: PlaneGrid = field(init=False)
    plane: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        r = self.settings
        self.plane = plane_shape(tuple(self.volume.shape), r.axis)
        self.grid = PlaneGrid.of(self.plane, r.tile, r.overlap, self.net.multiple)

    def load(self, region: Region) -> npt.NDArray[np.float32]:
        s = region[self.settings.axis]
        lo, hi = self.grey_range
        return _load_slab(
            self.volume, self.settings, s.start, s.stop, self.net.in_channels, lo, hi, self.grid
        )

    def compute(
        self, region: Region, data: Any, *, probabilities: bool, cancel: CancelToken | None
    ) -> Computed:
        r = self.settings
        labels, probs = predict_valid(
            data,
            self.predict,
            self.grid,
            self.plane,
            n_out=self.net.n_out,
            batch_size=r.batch_size,
            probabilities=probabilities,
            cancel=cancel,
        )
        labels = np.moveaxis(labels, 0, r.axis)
        if probs is not None:
            probs = np.moveaxis(probs, 0, r.axis + 1)
        return labels, probs


@dataclass
class MultiAxisStrategy:
    """2D on all three axes with valid-region stitching: z-slabs, the y and x passes tiled along z
    on a grid anchored to the volume (:class:`~.tiling.ZGrid`); probabilities always averaged."""

    volume: Any
    settings: ResolvedInference
    predict: PredictFn
    net: NetworkInfo
    grey_range: tuple[float, float]
    grid: PlaneGrid = field(init=False)
    zgrid: ZGrid = field(init=False)

    def __post_init__(self) -> None:
        r, shape = self.settings, tuple(self.volume.shape)
        self.grid = PlaneGrid.of(plane_shape(shape, 0), r.tile, r.overlap, self.net.multiple)
        self.zgrid = ZGrid.of(shape[0], r.overlap, self.net.multiple, self.net.in_channels // 2)

    def load(self, region: Region) -> tuple[npt.NDArray[np.float32], int]:
        lo, hi = self.grey_range
        return _load_window(self.volume, self.zgrid, region[0].start, region[0].stop, lo, hi)

    def compute(
        self, region: Region, data: Any, *, probabilities: bool, cancel: CancelToken | None
    ) -> Computed:
        averaged = _multi_axis_slab(
            data,
            region[0].start,
            region[0].stop,
            self.predict,
            self.zgrid,
            self.grid,
            self.settings,
            n_out=self.net.n_out,
            multiple=self.net.multiple,
            cancel=cancel,
            context=self.net.in_channels // 2,
        )
        return (np.argmax(averaged, axis=0) + 1).astype(np.uint8), averaged


@dataclass
class BlendStrategy:
    """3D, and every mode with blended stitching: the region is read with a halo of real
    neighbours (or as whole slices) and its overlapping tiles blended (:func:`~.tiling.predict_tiled`)."""

    volume: Any
    settings: ResolvedInference
    predict: PredictFn
    net: NetworkInfo
    grey_range: tuple[float, float]

    def load(self, region: Region) -> None:
        return None  # compute reads its haloed block itself

    def compute(
        self, region: Region, data: Any, *, probabilities: bool, cancel: CancelToken | None
    ) -> Computed:
        lo, hi = self.grey_range
        n = self.net
        probs = _predict_region(
            self.volume,
            region,
            self.predict,
            self.settings,
            n.n_out,
            n.in_channels,
            n.multiple,
            lo,
            hi,
            cancel,
        )
        return (np.argmax(probs, axis=0) + 1).astype(np.uint8), probs


def strategy_for(
    volume: Any,
    settings: ResolvedInference,
    predict: PredictFn,
    net: NetworkInfo,
    grey_range: tuple[float, float],
) -> Strategy:
    """The strategy of ``settings.mode`` and ``settings.stitch`` over a prepared ``volume``."""
    if settings.stitch == "valid":
        kind: type[SliceStrategy | MultiAxisStrategy]
        kind = MultiAxisStrategy if settings.mode == "2d-3axes" else SliceStrategy
        return kind(volume, settings, predict, net, grey_range)
    return BlendStrategy(volume, settings, predict, net, grey_range)


def region_grid(shape: tuple[int, ...], r: ResolvedInference) -> list[Region]:
    """The regions the volume is segmented in, in order: slabs of ``r.block`` slices along the
    slicing axis (2D, 2.5D), z-slabs (3D, valid multi-axis) or cubes of edge ``r.block``."""
    if r.mode in ("2d", "2.5d"):
        out = []
        for i in range(0, shape[r.axis], r.block):
            reg = [slice(None)] * 3
            reg[r.axis] = slice(i, min(i + r.block, shape[r.axis]))
            out.append(tuple(slice(*s.indices(shape[a])[:2]) for a, s in enumerate(reg)))
        return out  # type: ignore[return-value]
    if r.mode == "3d" or r.stitch == "valid":  # 3D, and the multi-axis mode's z-slabs
        return [
            (slice(i, min(i + r.block, shape[0])), slice(0, shape[1]), slice(0, shape[2]))
            for i in range(0, shape[0], r.block)
        ]
    return list(_blocks(shape, r.block))


def _load_slab(
    volume: Any,
    r: ResolvedInference,
    i0: int,
    i1: int,
    k: int,
    lo: float,
    hi: float,
    grid: PlaneGrid,
) -> npt.NDArray[np.float32]:
    """(S, k, Hp, Wp): normalised, mirror-padded images of slices i0..i1 (runs in the reader thread)."""
    return mirror_pad(_slab_images(volume, r.axis, i0, i1, k, lo, hi), grid.pads)


def _load_window(
    volume: Any, zgrid: ZGrid, z0: int, z1: int, lo: float, hi: float
) -> tuple[npt.NDArray[np.float32], int]:
    """(rows, Y, X) normalised padded rows that the tiles of slab ``z0 .. z1`` read, and the padded
    row the window starts at (runs in the reader thread)."""
    starts = zgrid.tiles(z0, z1)
    p0, p1 = starts[0], starts[-1] + zgrid.size
    rows = zgrid.index[p0:p1]
    v0, v1 = int(rows.min()), int(rows.max()) + 1
    block = apply_range(_read(volume, (slice(v0, v1), slice(None), slice(None))), lo, hi)
    return block[rows - v0], p0


def _multi_axis_slab(
    data: tuple[npt.NDArray[np.float32], int],
    z0: int,
    z1: int,
    predict: PredictFn,
    zgrid: ZGrid,
    grid: PlaneGrid,
    r: ResolvedInference,
    *,
    n_out: int,
    multiple: int,
    cancel: CancelToken | None,
    context: int = 0,
) -> npt.NDArray[np.float32]:
    """(C, z1 - z0, Y, X) probabilities of slab ``z0 .. z1`` from its window (what
    :func:`_load_window` returned): the mean of a z-, a y- and an x-pass.

    A 2.5D network (``context`` neighbours on each side) sees, in each pass, the neighbouring
    slices along that pass's axis as channels, mirrored at the volume's faces.
    """
    window, p0 = data
    _, ny, nx = window.shape
    h = zgrid.halo
    assert h >= context, "the z-grid's halo must cover the 2.5D context"
    common = dict(n_out=n_out, batch_size=r.batch_size, probabilities=True, cancel=cancel)
    # z-pass: the slab's slices, as the 2D / 2.5D modes segment them.
    zs = mirror_pad(
        with_neighbours(window[z0 + h - p0 - context : z1 + h - p0 + context], context), grid.pads
    )
    _, pz = predict_valid(zs, predict, grid, (ny, nx), **common)  # type: ignore[arg-type]
    del zs
    assert pz is not None
    acc = np.ascontiguousarray(pz.transpose(1, 0, 2, 3))
    del pz
    starts = [s - p0 for s in zgrid.tiles(z0, z1)]
    rows = slice(z0 - p0, z1 - p0)
    # y-pass (images: z x X) and x-pass (images: z x Y), a group of slices at a time.
    for axis, length, other in ((1, ny, nx), (2, nx, ny)):
        o_starts, o_core, o_size = plane_tiling(other, r.tile, h, multiple)
        ogrid = PlaneGrid((starts, o_starts), (zgrid.core, o_core), (zgrid.size, o_size), h)
        plane = (starts[-1] + zgrid.core, other)
        pads = [(0, 0), (h, o_size - o_core - h)]
        for g0 in range(0, length, ORTHO_GROUP):
            g1 = min(length, g0 + ORTHO_GROUP)
            part = window.take(reflected(g0 - context, g1 + context, length), axis=axis)
            imgs = mirror_pad(with_neighbours(np.moveaxis(part, axis, 0), context), pads)
            _, pr = predict_valid(imgs, predict, ogrid, plane, **common)  # type: ignore[arg-type]
            assert pr is not None
            got = pr[:, :, rows]  # (G, C, D, other)
            if axis == 1:
                acc[:, :, g0:g1, :] += got.transpose(1, 2, 0, 3)
            else:
                acc[:, :, :, g0:g1] += got.transpose(1, 2, 3, 0)
    acc /= 3.0
    return acc


def _read(volume: Any, region: tuple[slice, ...]) -> npt.NDArray[Any]:
    block = np.asarray(volume[region])
    if not isinstance(volume, FiniteCheckedVolume):  # a checked view has checked it already
        # Where the data are read, at no extra read: NaN would be segmented as a silent phase.
        check_finite(block, z0=region[0].start or 0)
    return block


def _slab_images(
    volume: Any, axis: int, i0: int, i1: int, k: int, lo: float, hi: float
) -> npt.NDArray[np.float32]:
    """(S, k, H, W) normalised images for slices i0..i1 along ``axis``, with k//2 neighbours as channels."""
    h = k // 2
    n = volume.shape[axis]
    a0, a1 = max(0, i0 - h), min(n, i1 + h)
    region = [slice(None)] * 3
    region[axis] = slice(a0, a1)
    block = np.moveaxis(apply_range(_read(volume, tuple(region)), lo, hi), axis, 0)
    if h:
        pb, pa = h - (i0 - a0), h - (a1 - i1)
        if pb or pa:
            block = np.pad(
                block,
                ((pb, pa), (0, 0), (0, 0)),
                mode="reflect" if block.shape[0] > max(pb, pa) else "edge",
            )
    return with_neighbours(block, h)


def _blocks(shape: tuple[int, ...], edge: int) -> Iterator[tuple[slice, slice, slice]]:
    for z in range(0, shape[0], edge):
        for y in range(0, shape[1], edge):
            for x in range(0, shape[2], edge):
                yield (
                    slice(z, min(z + edge, shape[0])),
                    slice(y, min(y + edge, shape[1])),
                    slice(x, min(x + edge, shape[2])),
                )


def _predict_region(
    volume: Any,
    region: tuple[slice, slice, slice],
    predict: PredictFn,
    r: ResolvedInference,
    n_out: int,
    in_channels: int,
    multiple: int,
    lo: float,
    hi: float,
    cancel: CancelToken | None,
) -> npt.NDArray[np.float32]:
    """(C, *region shape) probabilities for one block of the volume."""
    common = dict(
        n_out=n_out, overlap=r.overlap, batch_size=r.batch_size, multiple=multiple, cancel=cancel
    )
    if r.mode in ("2d", "2.5d"):
        s = region[r.axis]
        imgs = _slab_images(volume, r.axis, s.start, s.stop, in_channels, lo, hi)
        probs = predict_tiled(imgs, predict, tile=r.tile, **common)  # type: ignore[arg-type]
        # (S, C, H, W) with S along r.axis -> (C, *region)
        return np.moveaxis(probs, 0, r.axis + 1)
    # 3D and blended multi-axis: read the block with a halo of real neighbours on every axis.
    halo = r.overlap
    shape = volume.shape
    outer = tuple(
        slice(max(0, s.start - halo), min(n, s.stop + halo))
        for s, n in zip(region, shape, strict=True)
    )
    block = apply_range(_read(volume, outer), lo, hi)
    inner = tuple(
        slice(s.start - o.start, s.stop - o.start) for s, o in zip(region, outer, strict=True)
    )
    if r.mode == "3d":
        probs = predict_tiled(block[None, None], predict, tile=r.tile, **common)[0]  # type: ignore[arg-type]
    else:
        probs = np.zeros((n_out, *block.shape), np.float32)
        for ax in range(3):
            imgs = np.moveaxis(block, ax, 0)[:, None]
            p = predict_tiled(imgs, predict, tile=r.tile, **common)  # type: ignore[arg-type]
            probs += np.moveaxis(p, 0, ax + 1)
        probs /= 3.0
    return probs[(slice(None), *inner)]


def output_chunks(shape: tuple[int, ...], r: ResolvedInference) -> tuple[int, int, int]:
    """zarr chunks for a labels (or uncertainty) store written region by region.

    Aligned with :func:`region_grid`, so each chunk is written by one region and once: the region's
    extent along the axes it cuts, 512 (or the volume's size) along the axes it spans whole.
    """
    if r.mode in ("2d", "2.5d"):
        chunks = [512, 512, 512]
        chunks[r.axis] = r.block
    elif r.mode == "3d" or r.stitch == "valid":
        chunks = [r.block, 512, 512]
    else:
        chunks = [r.block] * 3
    return (min(chunks[0], shape[0]), min(chunks[1], shape[1]), min(chunks[2], shape[2]))
