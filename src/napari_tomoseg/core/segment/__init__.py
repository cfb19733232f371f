"""Tiled inference over volumes of any size: blocks -> tiles -> network -> blended probabilities -> labels.

volume --(robust range, once)--> normalised block (slab with halo) --> overlapping tiles in batches
--> predict (softmax) --> weighted blend --> argmax + 1 --> uint8 phases, written block by block.

Memory is bounded by the block (a slab of slices for 2D, 2.5D and multi-axis, a slab with halos for
3D, a cube with halos for blended multi-axis), never by the volume: probabilities exist only for
the block being processed. A memory budget (``InferenceConfig.memory``) picks the block and batch
sizes (:func:`plan_memory`).

2D, 2.5D and the multi-axis mode default to *valid-region stitching*: each tile carries a halo of
``overlap // 2`` mirrored or real context on every side and only its centre is kept, so nothing is
blended (2D and 2.5D take the argmax per tile). Tiles sit on a grid anchored to the volume, and
batches always have the same shape, so the labels do not depend on the block size (which
:mod:`.distributed` relies on). The multi-axis mode segments z-slabs: the slab's z-slices whole, and
its y- and x-slices cut into short tiles along z (:data:`ORTHO_TILE`) on a z-grid anchored to the
volume, so the three passes cost about five 2D passes rather than recomputing wide halos.
A reader thread loads and normalises the next slab while the network runs on the current one.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from napari_tomoseg.core.model import AXES, MODES, Mode, TomosegModel
from napari_tomoseg.core.prep.intensity import apply_range
from napari_tomoseg.core.progress import Cancelled, CancelToken, SegmentProgress, run_to_completion

log = logging.getLogger(__name__)

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Stitch = Literal["auto", "valid", "blend"]
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
                kids, i = list(child.children()), 0
                new: list[nn.Module] = []
                while i < len(kids):
                    conv, nxt = kids[i], kids[i + 1] if i + 1 < len(kids) else None
                    if isinstance(conv, nn.modules.conv._ConvNd) and isinstance(
                        nxt, nn.modules.batchnorm._BatchNorm
                    ):
                        transpose = isinstance(conv, nn.modules.conv._ConvTransposeNd)
                        new.append(fuse_conv_bn_eval(conv, nxt, transpose=transpose))
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


def is_out_of_memory(err: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, MPS), which a smaller batch may avoid."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


class Predictor:
    """Runs a :class:`TomosegModel` on batches of normalised tiles; returns softmax probabilities.

    Parameters
    ----------
    model : TomosegModel
    device : str
        ``auto`` (cuda, mps, cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``auto`` uses bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere.

    Notes
    -----
    Batch norm is folded into the convolutions and the network runs channels-last under
    ``torch.inference_mode``. On CUDA, batches go through a reused pinned host buffer with an
    asynchronous copy, run under autocast, and only uint8 labels (plus probabilities when asked
    for) come back. A device out-of-memory error halves the batch (down to one tile) instead of
    failing; :attr:`max_batch` remembers the size that fitted.
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
        # nn.Module.to accepts memory_format at run time; torch's stubs do not list it.
        self.network = net.to(self.device).to(memory_format=self._memory_format)  # type: ignore[call-overload]
        self.max_batch: int | None = None
        self._pinned: torch.Tensor | None = None

    @property
    def n_phases(self) -> int:
        return self.model.config.n_phases

    @property
    def precision_name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def _to_device(self, batch: npt.NDArray[np.float32]) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.device.type == "cuda":
            # One pinned staging buffer, grown when needed: page-locked memory makes the copy
            # asynchronous (non_blocking) and about twice as fast as from pageable memory.
            n = host.numel()
            if self._pinned is None or self._pinned.numel() < n:
                self._pinned = torch.empty(n, dtype=torch.float32).pin_memory()
            staged = self._pinned[:n].view(host.shape)
            staged.copy_(host)
            x = staged.to(self.device, non_blocking=True)
        else:
            x = host.to(self.device)
        return x.contiguous(memory_format=self._memory_format)

    def _logits(self, batch: npt.NDArray[np.float32]) -> torch.Tensor:
        x = self._to_device(batch)
        with torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        ):
            return self.network(x).float()

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            parts = run_halving(
                lambda b: torch.softmax(self._logits(b), dim=1).cpu().numpy(), batch, self
            )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def predict_core(
        self, batch: npt.NDArray[np.float32], core: tuple[slice, ...], *, probabilities: bool
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
        """Labels 0..C-1 (argmax) and optionally softmax probabilities of the ``core`` of each tile.

        The argmax is taken on the device, so only uint8 labels travel back unless
        ``probabilities`` is true.
        """

        def run(b: npt.NDArray[np.float32]) -> tuple[Any, Any]:
            logits = self._logits(b)[(slice(None), slice(None), *core)]
            lab = logits.argmax(1).to(torch.uint8).cpu().numpy()
            return lab, torch.softmax(logits, dim=1).cpu().numpy() if probabilities else None

        with torch.inference_mode():
            parts = run_halving(run, batch, self)
        lab = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        if not probabilities:
            return lab, None
        return lab, np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]


def run_halving(
    fn: Callable[[npt.NDArray[np.float32]], Any],
    batch: npt.NDArray[np.float32],
    owner: Any,
    *,
    is_oom: Callable[[BaseException], bool] = is_out_of_memory,
) -> list[Any]:
    """Run ``fn`` on ``batch`` in sub-batches, halving ``owner.max_batch`` on out-of-memory errors.

    Returns the list of per-sub-batch results in order. Only when a single tile does not fit is the
    error raised (with advice). ``owner`` is anything with a ``max_batch`` attribute (the
    :class:`Predictor`); the size that worked is kept for later batches.
    """
    results: list[Any] = []
    i = 0
    while i < len(batch):
        size = min(owner.max_batch or len(batch), len(batch) - i)
        try:
            results.append(fn(batch[i : i + size]))
        except (RuntimeError, MemoryError) as err:
            if not is_oom(err):
                raise
            if size == 1:
                raise MemoryError(
                    "the device ran out of memory on a single tile; use a smaller --tile or "
                    "--device cpu"
                ) from err
            owner.max_batch = size // 2
            log.warning(
                "out of device memory with %d tiles per batch; retrying with %d",
                size,
                owner.max_batch,
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        i += size
    return results


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


def _pad_width(
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
        b, a, te = _pad_width(length, t, border, multiple, overlap)
        pads.append((b, a))
        eff.append(te)
    padded = _mirror_pad(images, pads)
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
            w = _outer([windows[a][i] for a, i in enumerate(idx)])
            out[key] += probs[k] * w
    out /= wsum
    crop = tuple(slice(b, b + length) for (b, _), length in zip(pads, spatial, strict=True))
    return out[(slice(None), slice(None), *crop)]


def _mirror_pad(
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


@dataclass(frozen=True)
class ResolvedInference:
    mode: Mode
    axis: int
    tile: int
    overlap: int
    batch_size: int
    block: int
    stitch: Literal["valid", "blend"] = "blend"
    memory_estimate: int | None = None  # bytes, when a budget was given


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


# --------------------------------------------------------------------------------------------
# Memory budget
# --------------------------------------------------------------------------------------------

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
#: Core length along z of the tiles of the y and x passes of the multi-axis mode (the slab depth is
#: rounded to a multiple of it, so slabs and tiles line up).
ORTHO_TILE = 32
#: Slab depth cap of the multi-axis mode on the CPU (4x on a GPU), and the y- or x-slices its y and
#: x passes segment together.
_MAX_BLOCK_3AXES = 64
_ORTHO_GROUP = 16
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


def format_bytes(n: float) -> str:
    """``1.23 GB`` style (decimal units, as :func:`parse_memory` reads them back)."""
    for unit, f in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class MemoryPlan:
    """Block and batch sizes that fit a budget, with the expected peak and the smallest budget."""

    block: int
    batch_size: int
    estimate: int
    minimum: int


def _plane_tiling(length: int, tile: int, halo: int, multiple: int) -> tuple[list[int], int, int]:
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


def _plane_shape(shape: tuple[int, ...], axis: int) -> tuple[int, int]:
    plane = [n for a, n in enumerate(shape) if a != axis]
    return plane[0], plane[1]


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
        h, w = _plane_shape(shape, axis)
        plane = h * w
        if stitch == "valid":
            halo = overlap // 2
            ys, cy, sy = _plane_tiling(h, tile, halo, cfg.multiple)
            xs, cx, sx = _plane_tiling(w, tile, halo, cfg.multiple)
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
        _, cz, sz = _plane_tiling(shape[0], ORTHO_TILE, halo, cfg.multiple)
        # per slab slice: the window read and normalised (twice: prefetch), the z-pass input
        # (k channels) and probabilities, the accumulator, labels. Fixed: the window's rows beyond
        # the slab (the z-halo of the y and x passes, twice) and one group of y- or x-slices in
        # flight.
        per_unit = plane * (2 * (itemsize + 4) + 4 * k + 8 * c + 2 + probs)
        fixed = 2 * (sz - cz) * plane * (itemsize + 4)
        fixed += _ORTHO_GROUP * max(h, w) * (cz + sz) * (4 * k + 4 * c)
        tile_vox = max(
            _plane_tiling(h, tile, halo, cfg.multiple)[2]
            * _plane_tiling(w, tile, halo, cfg.multiple)[2],
            sz * _plane_tiling(max(h, w), tile, halo, cfg.multiple)[2],
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


def _gpu_batch(model: TomosegModel, device: torch.device, tile_vox: int, dtype: torch.dtype) -> int:
    """Tiles per batch that fit in half the GPU's free memory (activations per voxel measured on CPU)."""
    if device.type != "cuda":
        return 4
    free, _total = torch.cuda.mem_get_info(device)
    per = tile_vox * model.config.base_filters * _ACTIVATION_BYTES_PER_FILTER
    if dtype != torch.float32:
        per //= 2
    return int(max(1, min(64, free * 0.5 // max(1, per))))


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
    mode = config.mode or d.mode
    cfg = model.config
    if mode == "3d" and cfg.ndim != 3:
        raise ValueError(f"mode '3d' needs a 3D model; this model is 2D (use --mode {d.mode})")
    if mode != "3d" and cfg.ndim != 2:
        raise ValueError(f"mode {mode!r} needs a 2D model; this model is 3D (use --mode 3d)")
    if (mode == "2.5d" and cfg.in_channels == 1) or (mode == "2d" and cfg.in_channels > 1):
        raise ValueError(
            f"mode {mode!r} does not fit this model: it takes {cfg.in_channels} input channel(s); "
            f"use --mode {d.mode} (or 2d-3axes)"
        )
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
        batch = _gpu_batch(model, device, size**cfg.ndim, dtype)
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
        cz = _plane_tiling(shape[0], ORTHO_TILE, overlap // 2, cfg.multiple)[1]
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
    )


# --------------------------------------------------------------------------------------------
# Valid-region stitching for 2D and 2.5D
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlaneGrid:
    """The tile grid of one slice: core starts, core edges and input tile edges per in-plane axis."""

    starts: tuple[list[int], list[int]]
    core: tuple[int, int]
    size: tuple[int, int]
    halo: int

    @classmethod
    def of(cls, plane: tuple[int, int], tile: int, overlap: int, multiple: int) -> _PlaneGrid:
        halo = overlap // 2
        (ys, cy, sy), (xs, cx, sx) = (_plane_tiling(n, tile, halo, multiple) for n in plane)
        return cls((ys, xs), (cy, cx), (sy, sx), halo)

    @property
    def pads(self) -> list[tuple[int, int]]:
        return [(self.halo, s - c - self.halo) for s, c in zip(self.size, self.core, strict=True)]


def _load_slab(
    volume: Any,
    r: ResolvedInference,
    i0: int,
    i1: int,
    k: int,
    lo: float,
    hi: float,
    grid: _PlaneGrid,
) -> npt.NDArray[np.float32]:
    """(S, k, Hp, Wp): normalised, mirror-padded images of slices i0..i1 (runs in the reader thread)."""
    return _mirror_pad(_slab_images(volume, r.axis, i0, i1, k, lo, hi), grid.pads)


def _predict_core(
    predict: Predictor | PredictFn,
    batch: npt.NDArray[np.float32],
    core: tuple[slice, slice],
    n_out: int,
    probabilities: bool,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
    if isinstance(predict, Predictor):
        return predict.predict_core(batch, core, probabilities=probabilities)
    probs = predict(batch)
    if probs.shape != (len(batch), n_out, *batch.shape[2:]):
        raise ValueError(
            f"predictor returned shape {probs.shape}, expected {(len(batch), n_out, *batch.shape[2:])}"
        )
    probs = probs[(slice(None), slice(None), *core)]
    return probs.argmax(1).astype(np.uint8), probs if probabilities else None


def _segment_slab_valid(
    padded: npt.NDArray[np.float32],
    predict: Predictor | PredictFn,
    grid: _PlaneGrid,
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
        lab, pr = _predict_core(predict, batch, core, n_out, probabilities)
        for n, (s, y, x) in enumerate(chunk):
            labels[s, y : y + cy, x : x + cx] = lab[n]
            if probs is not None and pr is not None:
                probs[s, :, y : y + cy, x : x + cx] = pr[n]
    labels += 1
    return labels, probs


@dataclass(frozen=True)
class _ZGrid:
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
    def of(cls, depth: int, overlap: int, multiple: int, context: int = 0) -> _ZGrid:
        # a 2.5D network's z-pass reads ``context`` rows beyond each slab slice
        halo = max(overlap // 2, context)
        starts, core, size = _plane_tiling(depth, ORTHO_TILE, halo, multiple)
        rows = np.repeat(np.arange(depth, dtype=np.float32)[:, None], 2, axis=1)[None, None]
        index = _mirror_pad(rows, [(halo, size - core - halo), (0, 0)])[0, 0, :, 0]
        return cls(starts, core, size, halo, index.astype(np.intp))

    def tiles(self, z0: int, z1: int) -> list[int]:
        """Starts of the tiles whose cores meet rows ``z0 .. z1``."""
        return [s for s in self.starts if s < z1 and s + self.core > z0]


def _load_window(
    volume: Any, zgrid: _ZGrid, z0: int, z1: int, lo: float, hi: float
) -> tuple[npt.NDArray[np.float32], int]:
    """(rows, Y, X) normalised padded rows that the tiles of slab ``z0 .. z1`` read, and the padded
    row the window starts at (runs in the reader thread)."""
    starts = zgrid.tiles(z0, z1)
    p0, p1 = starts[0], starts[-1] + zgrid.size
    rows = zgrid.index[p0:p1]
    v0, v1 = int(rows.min()), int(rows.max()) + 1
    block = apply_range(_read(volume, (slice(v0, v1), slice(None), slice(None))), lo, hi)
    return block[rows - v0], p0


def _segment_slab_3axes(
    data: tuple[npt.NDArray[np.float32], int],
    z0: int,
    z1: int,
    predict: Predictor | PredictFn,
    zgrid: _ZGrid,
    grid: _PlaneGrid,
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
    zs = _mirror_pad(
        _with_neighbours(window[z0 + h - p0 - context : z1 + h - p0 + context], context), grid.pads
    )
    _, pz = _segment_slab_valid(zs, predict, grid, (ny, nx), **common)  # type: ignore[arg-type]
    del zs
    assert pz is not None
    acc = np.ascontiguousarray(pz.transpose(1, 0, 2, 3))
    del pz
    starts = [s - p0 for s in zgrid.tiles(z0, z1)]
    rows = slice(z0 - p0, z1 - p0)
    # y-pass (images: z x X) and x-pass (images: z x Y), a group of slices at a time.
    for axis, length, other in ((1, ny, nx), (2, nx, ny)):
        o_starts, o_core, o_size = _plane_tiling(other, r.tile, h, multiple)
        ogrid = _PlaneGrid((starts, o_starts), (zgrid.core, o_core), (zgrid.size, o_size), h)
        plane = (starts[-1] + zgrid.core, other)
        pads = [(0, 0), (h, o_size - o_core - h)]
        for g0 in range(0, length, _ORTHO_GROUP):
            g1 = min(length, g0 + _ORTHO_GROUP)
            part = window.take(_reflected(g0 - context, g1 + context, length), axis=axis)
            imgs = _mirror_pad(_with_neighbours(np.moveaxis(part, axis, 0), context), pads)
            _, pr = _segment_slab_valid(imgs, predict, ogrid, plane, **common)  # type: ignore[arg-type]
            assert pr is not None
            got = pr[:, :, rows]  # (G, C, D, other)
            if axis == 1:
                acc[:, :, g0:g1, :] += got.transpose(1, 2, 0, 3)
            else:
                acc[:, :, :, g0:g1] += got.transpose(1, 2, 3, 0)
    acc /= 3.0
    return acc


def _reflected(i0: int, i1: int, n: int) -> npt.NDArray[np.intp]:
    """Indices ``i0 .. i1`` into an axis of length ``n``, mirrored at its ends (numpy's "reflect",
    repeated for ranges longer than the axis)."""
    i = np.arange(i0, i1)
    if n == 1:
        return np.zeros_like(i)
    period = 2 * (n - 1)
    i = np.mod(i, period)
    return np.where(i < n, i, period - i)


def _with_neighbours(rows: npt.NDArray[np.float32], context: int) -> npt.NDArray[np.float32]:
    """(S, 2 context + 1, ...) stacks from (S + 2 context, ...) consecutive slices: each slice
    with its ``context`` neighbours on either side as channels."""
    s = rows.shape[0] - 2 * context
    if not context:
        return rows[:, None]
    return np.stack([rows[c : c + s] for c in range(2 * context + 1)], axis=1)


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
    return _with_neighbours(block, h)


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
    if r.mode == "3d" or r.stitch == "valid":  # 3D, and the multi-axis mode's z-slabs
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

    A reader thread loads and normalises the next block while the network runs on the current one,
    and a writer thread stores finished labels; an event is yielded once its block is in ``out``.

    Parameters
    ----------
    volume : (Z, Y, X) array-like
        numpy, memory-mapped, zarr, HDF5 or :class:`~napari_tomoseg.core.io.LazySliceStack`;
        read one block at a time.
    predictor : Predictor or callable
        A :class:`Predictor`, or any callable on normalised batches (then pass ``model`` for its
        defaults, phases and normalisation).
    out : array-like, optional
        uint8 (Z, Y, X) destination (e.g. a zarr array); a new numpy array by default.
    probabilities_out : array-like, optional
        float16 (C, Z, Y, X) destination for the probabilities (anything that accepts
        ``probabilities_out[(slice(None), *region)] = block``, e.g. a per-block entropy writer).
    mask : (Z, Y, X) bool array-like, optional
        Voxels outside it are labelled 0.
    grey_range : (low, high), optional
        The grey values mapped to 0 and 1; computed from a subsample of the volume by default.
        When given, ``volume`` is taken as prepared by the caller (``model.normalization.prepare``:
        ring removal), so that a caller segmenting part of a volume prepares the whole one once.

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
    r = resolve(
        config,
        model,
        shape,
        itemsize=np.dtype(volume.dtype).itemsize,
        probabilities=probabilities_out is not None,
        device=getattr(predictor, "device", None),
        dtype=getattr(predictor, "dtype", torch.float32),
    )
    if grey_range is None:
        volume = model.normalization.prepare(volume, ring_removal=config.ring_removal)
    lo, hi = grey_range or model.normalization.volume_range(volume)
    n_out = model.config.n_phases
    if out is None:
        out = np.zeros(shape, np.uint8)
    elif tuple(out.shape) != shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from the volume's {shape}")
    log.info(
        "segmenting %s: mode %s, axis %d, tile %d, overlap %d, %s stitching, block %d, batch %d%s",
        shape,
        r.mode,
        r.axis,
        r.tile,
        r.overlap,
        r.stitch,
        r.block,
        r.batch_size,
        f", expected peak {format_bytes(r.memory_estimate)}" if r.memory_estimate else "",
    )
    t0 = time.perf_counter()
    total = int(np.prod(shape))
    regions = _regions(shape, r)
    k, multiple = model.config.in_channels, model.config.multiple
    three_axes = r.mode == "2d-3axes" and r.stitch == "valid"
    valid = r.stitch == "valid" and not three_axes
    plane = _plane_shape(shape, 0 if three_axes else r.axis)
    grid = _PlaneGrid.of(plane, r.tile, r.overlap, multiple)
    zgrid = _ZGrid.of(shape[0], r.overlap, multiple, k // 2) if three_axes else None

    def load(region: tuple[slice, slice, slice]) -> Any:
        if three_axes:
            assert zgrid is not None
            return _load_window(volume, zgrid, region[0].start, region[0].stop, lo, hi)
        if not valid:
            return None  # the blend path reads its (haloed) block itself
        s = region[r.axis]
        return _load_slab(volume, r, s.start, s.stop, k, lo, hi, grid)

    def compute(region: tuple[slice, slice, slice], data: Any) -> tuple[Any, Any]:
        if three_axes:
            assert zgrid is not None
            averaged = _segment_slab_3axes(
                data,
                region[0].start,
                region[0].stop,
                predictor,
                zgrid,
                grid,
                r,
                n_out=n_out,
                multiple=multiple,
                cancel=cancel,
                context=k // 2,
            )
            return (np.argmax(averaged, axis=0) + 1).astype(np.uint8), averaged
        if valid:
            labels, probs = _segment_slab_valid(
                data,
                predictor,
                grid,
                plane,
                n_out=n_out,
                batch_size=r.batch_size,
                probabilities=probabilities_out is not None,
                cancel=cancel,
            )
            labels = np.moveaxis(labels, 0, r.axis)
            if probs is not None:
                probs = np.moveaxis(probs, 0, r.axis + 1)
            return labels, probs
        probs = _predict_region(volume, region, predictor, r, n_out, k, multiple, lo, hi, cancel)
        return (np.argmax(probs, axis=0) + 1).astype(np.uint8), probs

    def store(region: tuple[slice, slice, slice], labels: Any, probs: Any) -> None:
        if mask is not None:
            labels[~np.asarray(mask[region], dtype=bool)] = 0
        out[region] = labels
        if probabilities_out is not None:
            probabilities_out[(slice(None), *region)] = probs.astype(np.float16)

    done = 0
    # Threads, not processes: reading (zarr/TIFF decompression, memmap copies) and numpy release
    # the GIL, so IO overlaps the network without copying blocks between processes.
    with (
        ThreadPoolExecutor(1, thread_name_prefix="tomoseg-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="tomoseg-write") as writer,
    ):
        upcoming: Future[Any] = reader.submit(load, regions[0])
        pending: tuple[Future[None], SegmentProgress] | None = None
        try:
            for i, region in enumerate(regions):
                if cancel is not None and cancel.cancelled:
                    raise Cancelled("segmentation stopped")
                data = upcoming.result()
                if i + 1 < len(regions):
                    upcoming = reader.submit(load, regions[i + 1])
                labels, probs = compute(region, data)
                del data
                if pending is not None:
                    pending[0].result()
                    yield pending[1]
                done += labels.size
                event = SegmentProgress(done, total, region, time.perf_counter() - t0)
                pending = (writer.submit(store, region, labels, probs), event)
                del labels, probs
            if pending is not None:
                pending[0].result()
                yield pending[1]
        finally:
            upcoming.cancel()
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
