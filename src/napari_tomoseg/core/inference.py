"""Tiled inference over volumes of any size: blocks -> tiles -> network -> blended probabilities -> labels.

volume --(robust range, once)--> normalised block (slab with halo) --> overlapping tiles in batches
--> predict (softmax) --> weighted blend --> argmax + 1 --> uint8 phases, written block by block.

Memory is bounded by the block (a slab of slices for 2D / 2.5D, a cube with halos for 3D and
multi-axis), never by the volume: probabilities exist only for the block being processed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .model import AXES, MODES, Mode, TomosegModel
from .normalize import apply_range
from .progress import Cancelled, CancelToken, SegmentProgress, run_to_completion

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PredictFn = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


# --------------------------------------------------------------------------------------------
# Devices and precision
# --------------------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' requested but no CUDA GPU is visible to torch; use --device cpu or auto"
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ValueError(
            "device 'mps' requested but Apple MPS is not available; use --device cpu or auto"
        )
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(device)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype:
    """The autocast dtype to run in (``torch.float32`` = no autocast)."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type == "cpu":
            raise ValueError("fp16 is not supported on the CPU; use bf16 or fp32")
        return torch.float16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


# --------------------------------------------------------------------------------------------
# The predictor: a model loaded once, predicting many batches
# --------------------------------------------------------------------------------------------


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """A copy of ``network`` (in eval mode) with every conv -> BN pair folded into one conv.

    Saves one memory pass per convolution at inference (batch norm is memory-bound on CPUs).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net = copy.deepcopy(network).eval()

    def fold(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Sequential):
                kids, new, i = list(child.children()), [], 0
                while i < len(kids):
                    conv, nxt = kids[i], kids[i + 1] if i + 1 < len(kids) else None
                    if isinstance(conv, nn.modules.conv._ConvNd) and isinstance(
                        nxt, nn.modules.batchnorm._BatchNorm
                    ):
                        transpose = isinstance(conv, nn.modules.conv._ConvTransposeNd)
                        new.append(fuse_conv_bn_eval(conv, nxt, transpose=transpose))  # type: ignore[arg-type]
                        i += 2
                    else:
                        fold(conv)
                        new.append(conv)
                        i += 1
                setattr(module, name, nn.Sequential(*new))
            else:
                fold(child)

    fold(net)
    return net


class Predictor:
    """Runs a :class:`TomosegModel` on batches of normalised tiles; returns softmax probabilities.

    Parameters
    ----------
    model : TomosegModel
    device : str
        ``auto`` (cuda, mps, cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``auto`` uses bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere.
    """

    def __init__(
        self, model: TomosegModel, *, device: str = "auto", precision: Precision = "auto"
    ) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.dtype = resolve_precision(precision, self.device)
        net = fold_batch_norm(model.network)
        self._memory_format = (
            torch.channels_last if model.config.ndim == 2 else torch.channels_last_3d
        )
        self.network = net.to(self.device).to(memory_format=self._memory_format)

    @property
    def n_phases(self) -> int:
        return self.model.config.n_phases

    @property
    def precision_name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        x = x.contiguous(memory_format=self._memory_format)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32),
        ):
            logits = self.network(x)
        probs = torch.softmax(logits.float(), dim=1)
        return probs.cpu().numpy()


# --------------------------------------------------------------------------------------------
# Tiling: pure functions, any number of spatial dimensions
# --------------------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``0..length`` with at least ``overlap`` shared.

    Starts are spread evenly, so every overlap is about equal and the last tile ends at ``length``.
    """
    if tile >= length:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def _window(tile: int, starts: list[int], index: int, overlap: int) -> npt.NDArray[np.float32]:
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


def _pad_width(length: int, tile: int, border: int, multiple: int, overlap: int) -> tuple[int, int, int]:
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
        b, a, te = _pad_width(length, t, border, multiple, overlap)
        pads.append((b, a))
        eff.append(te)
    mode = "reflect" if min(spatial) > 1 else "edge"
    # numpy's reflect needs pad < length; repeat it for tiny images.
    padded = images
    for ax, (b, a) in enumerate(pads):
        while b > 0 or a > 0:
            n = padded.shape[2 + ax] - 1 if mode == "reflect" else max(b, a)
            pb, pa = min(b, n), min(a, n)
            width = [(0, 0)] * padded.ndim
            width[2 + ax] = (pb, pa)
            padded = np.pad(padded, width, mode=mode)
            b, a = b - pb, a - pa
    pshape = padded.shape[2:]
    starts = [
        tile_starts(length, t, min(overlap, t // 2)) for length, t in zip(pshape, eff, strict=True)
    ]
    windows = [
        [_window(t, st, i, min(overlap, t // 2)) for i in range(len(st))]
        for t, st in zip(eff, starts, strict=True)
    ]
    out = np.zeros((images.shape[0], n_out, *pshape), np.float32)
    wsum = np.zeros(pshape, np.float32)
    grid = list(np.ndindex(*(len(s) for s in starts)))
    for idx in grid:
        region = tuple(slice(starts[a][i], starts[a][i] + eff[a]) for a, i in enumerate(idx))
        wsum[region] += _outer([windows[a][i] for a, i in enumerate(idx)])
    jobs = [(s, idx) for s in range(images.shape[0]) for idx in grid]
    for j0 in range(0, len(jobs), batch_size):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("segmentation stopped")
        chunk = jobs[j0 : j0 + batch_size]
        regions = [
            tuple(slice(starts[a][i], starts[a][i] + eff[a]) for a, i in enumerate(idx))
            for _, idx in chunk
        ]
        batch = np.stack(
            [padded[(s, slice(None), *r)] for (s, _), r in zip(chunk, regions, strict=True)]
        )
        probs = predict(batch)
        if probs.shape != (len(chunk), n_out, *eff):
            raise ValueError(
                f"predictor returned shape {probs.shape}, expected {(len(chunk), n_out, *eff)}"
            )
        for k, ((s, idx), r) in enumerate(zip(chunk, regions, strict=True)):
            w = _outer([windows[a][i] for a, i in enumerate(idx)])
            out[(s, slice(None), *r)] += probs[k] * w
    out /= wsum
    crop = tuple(slice(b, b + length) for (b, _), length in zip(pads, spatial, strict=True))
    return out[(slice(None), slice(None), *crop)]


def _outer(vectors: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    w = vectors[0]
    for v in vectors[1:]:
        w = np.multiply.outer(w, v)
    return w


# --------------------------------------------------------------------------------------------
# Volume-level driver
# --------------------------------------------------------------------------------------------


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
        Tile edge and overlap in voxels (in-plane for 2D, cubic for 3D).
    batch_size : int
        Tiles per forward pass.
    block : int
        Slices per slab (2D, 2.5D) or edge of the cubic blocks (3D, multi-axis); bounds memory.
    """

    mode: Mode | None = None
    axis: str | None = None
    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 4
    block: int | None = None
    device: str = "auto"
    precision: Precision = "auto"

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
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.block is not None and self.block < 1:
            raise ValueError(f"block must be >= 1, got {self.block}")


@dataclass(frozen=True)
class ResolvedInference:
    mode: Mode
    axis: int
    tile: int
    overlap: int
    batch_size: int
    block: int


@dataclass
class SegmentResult:
    """What :func:`iter_segment` returns."""

    labels: Any  # uint8 array-like (the ``out`` passed in, or a new numpy array)
    probabilities: Any | None
    grey_range: tuple[float, float]
    seconds: float
    settings: ResolvedInference
    device: str
    precision: str
    extra: dict[str, Any] = field(default_factory=dict)


def resolve(
    config: InferenceConfig, model: TomosegModel, shape: tuple[int, ...]
) -> ResolvedInference:
    """Fill ``None`` fields from the model's defaults and check they fit the model and volume."""
    d = model.defaults
    mode = config.mode or d.mode
    cfg = model.config
    if mode == "3d" and cfg.ndim != 3:
        raise ValueError(f"mode '3d' needs a 3D model; this model is 2D (use --mode {d.mode})")
    if mode != "3d" and cfg.ndim != 2:
        raise ValueError(f"mode {mode!r} needs a 2D model; this model is 3D (use --mode 3d)")
    if (mode == "2.5d") != (cfg.in_channels > 1):
        raise ValueError(
            f"mode {mode!r} does not fit this model: it takes {cfg.in_channels} input channel(s); "
            f"use --mode {d.mode}"
        )
    tile = config.tile or d.tile
    if tile % cfg.multiple:
        raise ValueError(
            f"tile {tile} must be a multiple of {cfg.multiple} for this network (depth {cfg.depth})"
        )
    overlap = d.overlap if config.overlap is None else config.overlap
    overlap = min(overlap, tile // 2)
    if config.block is not None:
        block = config.block
    elif mode in ("2d", "2.5d"):
        block = 8
    else:
        block = 64 if mode == "3d" else 96
    return ResolvedInference(
        mode, AXES[config.axis or d.axis], tile, overlap, config.batch_size, block
    )


def _read(volume: Any, region: tuple[slice, ...]) -> npt.NDArray[Any]:
    return np.asarray(volume[region])


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
        s = i1 - i0
        return np.stack([block[c : c + s] for c in range(k)], axis=1)
    return block[:, None]


def _blocks(shape: tuple[int, ...], edge: int) -> Iterator[tuple[slice, slice, slice]]:
    for z in range(0, shape[0], edge):
        for y in range(0, shape[1], edge):
            for x in range(0, shape[2], edge):
                yield (
                    slice(z, min(z + edge, shape[0])),
                    slice(y, min(y + edge, shape[1])),
                    slice(x, min(x + edge, shape[2])),
                )


def _regions(shape: tuple[int, ...], r: ResolvedInference) -> list[tuple[slice, slice, slice]]:
    if r.mode in ("2d", "2.5d"):
        out = []
        for i in range(0, shape[r.axis], r.block):
            reg = [slice(None)] * 3
            reg[r.axis] = slice(i, min(i + r.block, shape[r.axis]))
            out.append(tuple(slice(*s.indices(shape[a])[:2]) for a, s in enumerate(reg)))
        return out  # type: ignore[return-value]
    if r.mode == "3d":
        return [
            (slice(i, min(i + r.block, shape[0])), slice(0, shape[1]), slice(0, shape[2]))
            for i in range(0, shape[0], r.block)
        ]
    return list(_blocks(shape, r.block))


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
    # 3D and multi-axis: read the block with a halo of real neighbours on every axis.
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


def iter_segment(
    volume: Any,
    predictor: Predictor | PredictFn,
    config: InferenceConfig = InferenceConfig(),
    *,
    model: TomosegModel | None = None,
    out: Any | None = None,
    probabilities_out: Any | None = None,
    mask: Any | None = None,
    grey_range: tuple[float, float] | None = None,
    cancel: CancelToken | None = None,
) -> Generator[SegmentProgress, None, SegmentResult]:
    """Segment ``volume`` block by block, yielding a :class:`SegmentProgress` after each block.

    Parameters
    ----------
    volume : (Z, Y, X) array-like
        numpy, memory-mapped or zarr; read one block at a time.
    predictor : Predictor or callable
        A :class:`Predictor`, or any callable on normalised batches (then pass ``model`` for its
        defaults, phases and normalisation).
    out : array-like, optional
        uint8 (Z, Y, X) destination (e.g. a zarr array); a new numpy array by default.
    probabilities_out : array-like, optional
        float16 (C, Z, Y, X) destination for the blended probabilities.
    mask : (Z, Y, X) bool array-like, optional
        Voxels outside it are labelled 0.
    grey_range : (low, high), optional
        The grey values mapped to 0 and 1; computed from a subsample of the volume by default.

    Returns
    -------
    SegmentResult (through ``StopIteration.value``; see :func:`segment_volume`).
    """
    model = model or getattr(predictor, "model", None)
    if model is None:
        raise ValueError("pass model= when predictor is a plain callable")
    shape = tuple(volume.shape)
    if len(shape) != 3:
        raise ValueError(f"expected a 3D volume (z, y, x), got shape {shape}")
    if mask is not None and tuple(mask.shape) != shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the volume's {shape}")
    r = resolve(config, model, shape)
    lo, hi = grey_range or model.normalization.volume_range(volume)
    n_out = model.config.n_phases
    if out is None:
        out = np.zeros(shape, np.uint8)
    elif tuple(out.shape) != shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from the volume's {shape}")
    t0 = time.perf_counter()
    total = int(np.prod(shape))
    done = 0
    for region in _regions(shape, r):
        if cancel is not None and cancel.cancelled:
            raise Cancelled("segmentation stopped")
        probs = _predict_region(
            volume,
            region,
            predictor,
            r,
            n_out,
            model.config.in_channels,
            model.config.multiple,
            lo,
            hi,
            cancel,
        )
        labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
        if mask is not None:
            labels[~np.asarray(mask[region], dtype=bool)] = 0
        out[region] = labels
        if probabilities_out is not None:
            probabilities_out[(slice(None), *region)] = probs.astype(np.float16)
        done += labels.size
        yield SegmentProgress(done, total, region, time.perf_counter() - t0)
    return SegmentResult(
        labels=out,
        probabilities=probabilities_out,
        grey_range=(lo, hi),
        seconds=time.perf_counter() - t0,
        settings=r,
        device=str(getattr(predictor, "device", "custom")),
        precision=getattr(predictor, "precision_name", "custom"),
    )


def segment_volume(
    volume: Any,
    model: TomosegModel,
    config: InferenceConfig = InferenceConfig(),
    *,
    progress: Callable[[SegmentProgress], None] | None = None,
    **kwargs: Any,
) -> SegmentResult:
    """Segment a whole volume with ``model`` and return the :class:`SegmentResult` (labels 1..C)."""
    predictor = Predictor(model, device=config.device, precision=config.precision)
    return run_to_completion(iter_segment(volume, predictor, config, **kwargs), progress)
