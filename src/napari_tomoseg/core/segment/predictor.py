"""The predictor: a model loaded once onto its device, predicting many batches of normalised tiles.

TomosegModel -> batch norm folded, channels-last, on the device (:class:`Predictor`)
-> batches (N, C_in, *tile) float32 -> softmax probabilities, or uint8 argmax labels of each tile's
core (:meth:`Predictor.predict_core`); :func:`run_halving` halves the batch on out-of-memory errors.
Test-time augmentation (``tta``): every batch also runs through the :func:`tta_symmetries`, each
result transformed back (:func:`invert_symmetry`) and the probabilities averaged
(:func:`average_over_symmetries`); :class:`TestTimeAugmented` does the same for any callable.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from napari_tomoseg.core.model import TomosegModel
from napari_tomoseg.core.segment.device import (
    Precision,
    is_out_of_memory,
    precision_name,
    resolve_device,
    resolve_precision,
)

log = logging.getLogger(__name__)

#: A symmetry of a tile: (axis permutation, flips) of its spatial axes, as in
#: ``core.learn.augment.apply_dihedral``: axis ``i`` of the result is axis ``perm[i]`` of the input,
#: then the result's axes with ``flips[i]`` are reversed.
Symmetry = tuple[tuple[int, ...], tuple[bool, ...]]


def tta_symmetries(ndim: int) -> list[Symmetry]:
    """The symmetries test-time augmentation averages over, identity first.

    2D (and 2.5D, whose context slices are channels): the 8 symmetries of the square. 3D: the 8
    flips of the three axes, without axis permutations. The 48 symmetries of the cube would cost
    48 network passes per tile for little more averaging; the flips cost the same as 2D, keep z
    (the scan's rotation axis, along which rings and cone-beam blur differ) the slicing axis, and
    keep a block's shape, so non-cubic blocks and the memory plan are unchanged. Both sets are
    groups, so the averaged prediction is exactly equivariant under each of their symmetries.
    """
    if ndim == 2:
        return [
            (perm, flips)
            for perm in itertools.permutations(range(2))
            for flips in itertools.product((False, True), repeat=2)
        ]
    if ndim == 3:
        return [((0, 1, 2), flips) for flips in itertools.product((False, True), repeat=3)]
    raise ValueError(f"test-time augmentation works on 2D or 3D tiles, got ndim={ndim}")


def apply_symmetry(x: torch.Tensor, symmetry: Symmetry) -> torch.Tensor:
    """``symmetry`` applied to the last ``len(perm)`` axes of ``x`` (batch and channels untouched);
    the convention of ``core.learn.augment.apply_dihedral``."""
    perm, flips = symmetry
    lead = x.ndim - len(perm)
    out = x.permute(*range(lead), *(lead + p for p in perm))
    dims = [lead + i for i, f in enumerate(flips) if f]
    return out.flip(dims) if dims else out


def invert_symmetry(x: torch.Tensor, symmetry: Symmetry) -> torch.Tensor:
    """The inverse of :func:`apply_symmetry`: ``invert_symmetry(apply_symmetry(x, s), s)`` is ``x``."""
    perm, flips = symmetry
    lead = x.ndim - len(perm)
    dims = [lead + i for i, f in enumerate(flips) if f]
    out = x.flip(dims) if dims else x
    inverse = sorted(range(len(perm)), key=lambda i: perm[i])
    return out.permute(*range(lead), *(lead + i for i in inverse))


def average_over_symmetries(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    symmetries: Sequence[Symmetry],
) -> torch.Tensor:
    """Mean over ``symmetries`` s of ``invert_symmetry(forward(apply_symmetry(x, s)), s)``.

    ``forward`` maps (N, C_in, *tile) to (N, C_out, *tile) probabilities; one pass per symmetry, so
    memory grows by one accumulator, not by the number of symmetries.
    """
    total: torch.Tensor | None = None
    for symmetry in symmetries:
        p = invert_symmetry(forward(apply_symmetry(x, symmetry)), symmetry)
        total = p if total is None else total + p
    if total is None:
        raise ValueError("no symmetries to average over")
    return total / len(symmetries)


class TestTimeAugmented:
    """Any predictor callable with its probabilities averaged over :func:`tta_symmetries`.

    What :class:`Predictor` does on its device with ``tta=True``, for a plain callable on numpy
    batches (tests, benchmarks, custom predictors given to a Segmenter).

    Parameters
    ----------
    predict : callable
        (N, C_in, *tile) float32 -> (N, C_out, *tile) float32 probabilities.
    """

    __test__ = False  # not a pytest class, whatever its name

    def __init__(self, predict: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]):
        self.predict = predict

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        def forward(t: torch.Tensor) -> torch.Tensor:
            out = self.predict(np.ascontiguousarray(t.numpy(), dtype=np.float32))
            return torch.from_numpy(np.asarray(out, dtype=np.float32))

        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        result: npt.NDArray[np.float32] = average_over_symmetries(
            forward, x, tta_symmetries(batch.ndim - 2)
        ).numpy()
        return result


def fold_batch_norm(network: nn.Module) -> nn.Module:
    """A copy of ``network`` (in eval mode) with every conv -> BN pair folded into one conv.

    Saves one memory pass per convolution at inference (batch norm is memory-bound on CPUs).
    """

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


class Predictor:
    """Runs a :class:`TomosegModel` on batches of normalised tiles; returns softmax probabilities.

    Parameters
    ----------
    model : TomosegModel
    device : str
        ``auto`` (cuda, mps, cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    precision : {"auto", "fp32", "bf16", "fp16"}
        ``auto`` uses bf16 on GPUs and on CPUs with native bf16, fp32 elsewhere.
    tta : bool
        Test-time augmentation: softmax probabilities averaged over :func:`tta_symmetries` (8
        network passes per batch, on the device).

    Notes
    -----
    Batch norm is folded into the convolutions and the network runs channels-last under
    ``torch.inference_mode``. On CUDA, batches go through a reused pinned host buffer with an
    asynchronous copy, run under autocast, and only uint8 labels (plus probabilities when asked
    for) come back. A device out-of-memory error halves the batch (down to one tile) instead of
    failing; :attr:`max_batch` remembers the size that fitted.
    """

    def __init__(
        self,
        model: TomosegModel,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        tta: bool = False,
    ) -> None:
        self.model = model
        self.tta = tta
        self.symmetries = tta_symmetries(model.config.ndim) if tta else []
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
        return precision_name(self.dtype)

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

    def with_tta(self, tta: bool) -> Predictor:
        """This predictor with test-time augmentation on or off; the network on the device is shared."""
        if tta == self.tta:
            return self
        other = copy.copy(self)
        other.tta = tta
        other.symmetries = tta_symmetries(self.model.config.ndim) if tta else []
        other._pinned = None  # a staging buffer per predictor: two may run in two threads
        return other

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self._memory_format)
        with torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        ):
            return self.network(x).float()

    def _logits(self, batch: npt.NDArray[np.float32]) -> torch.Tensor:
        return self._forward(self._to_device(batch))

    def _probabilities(self, batch: npt.NDArray[np.float32]) -> torch.Tensor:
        """Softmax probabilities on the device, averaged over the symmetries with ``tta``."""
        x = self._to_device(batch)
        if not self.tta:
            return torch.softmax(self._forward(x), dim=1)
        return average_over_symmetries(
            lambda t: torch.softmax(self._forward(t), dim=1), x, self.symmetries
        )

    def __call__(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with torch.inference_mode():
            parts = run_halving(lambda b: self._probabilities(b).cpu().numpy(), batch, self)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def predict_core(
        self, batch: npt.NDArray[np.float32], core: tuple[slice, ...], *, probabilities: bool
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
        """Labels 0..C-1 (argmax) and optionally softmax probabilities of the ``core`` of each tile.

        The argmax is taken on the device, so only uint8 labels travel back unless
        ``probabilities`` is true.
        """

        def run(b: npt.NDArray[np.float32]) -> tuple[Any, Any]:
            where = (slice(None), slice(None), *core)
            if self.tta:
                probs = self._probabilities(b)[where]
                lab = probs.argmax(1).to(torch.uint8).cpu().numpy()
                return lab, probs.cpu().numpy() if probabilities else None
            logits = self._logits(b)[where]
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
