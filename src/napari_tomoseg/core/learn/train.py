"""Training on sparse annotations: crops where annotations are -> augment -> U-Net -> loss -> AdamW.

annotated volumes -> CropSampler (rare phases oversampled) -> batches -> iter_train (generator of
TrainProgress events, cancel token, validation, best weights kept) -> TrainResult.
Unannotated voxels (label 0) never contribute to the loss.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from napari_tomoseg.core.checks import check_finite
from napari_tomoseg.core.learn.augment import random_dihedral, random_intensity
from napari_tomoseg.core.learn.losses import phase_weights, prior_corrected_weights
from napari_tomoseg.core.progress import CancelToken, run_to_completion

log = logging.getLogger(__name__)


#: Largest share of the (step or time) budget spent warming the learning rate up.
WARMUP_FRACTION = 0.05


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run. Give ``steps``, ``budget`` (seconds) or both: the first reached stops."""

    crop: int = 128
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    loss: Literal["jaccard", "jaccard+ce"] = "jaccard+ce"
    steps: int | None = None
    budget: float | None = None
    warmup: int = 50
    #: Steps between validations; None spreads ``validations`` evenly over the run (its steps or
    #: its budget), so a run that makes more steps in its time does not validate more often.
    validate_every: int | None = 100
    validations: int = 12
    #: Largest share of a timed run's seconds spent validating: a spread validation falls out when
    #: the validations so far took more (on a 2-core AVX2 CPU, 12 validations of a 2.5D model's
    #: held-out bands took a sixth of a 40 s run). The start's and the closing one always run.
    validation_share: float = 0.1
    patience: int | None = None
    rare_fraction: float = 0.3
    class_weight_power: float = 0.5
    axes: tuple[int, ...] = (0, 1, 2)
    augment: bool = True
    seed: int = 0
    optimizer: Literal["adamw", "adabelief"] = "adamw"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: Shards of each batch computed in parallel (one per CPU thread); None: one per thread torch uses.
    workers: int | None = None
    #: Weights returned: ``"best"`` validated, or ``"last"`` (unless the starting ones score better).
    keep: Literal["best", "last"] = "best"
    #: Phase shares of the slices the annotations were drawn from, when they differ from the
    #: annotations' own (strokes): the cross-entropy is weighted as whole slices would weigh it.
    class_prior: tuple[float, ...] | None = None
    #: Weight of the cross-entropy on guided targets (``C+1..2C``: the starting model's confident
    #: guesses where sparse annotations say nothing, see :mod:`~.losses`); None: no guided targets.
    guide: float | None = None

    def __post_init__(self) -> None:
        if self.keep not in ("best", "last"):
            raise ValueError(f"TrainConfig.keep must be 'best' or 'last', got {self.keep!r}")
        if self.validate_every is not None and self.validate_every < 1:
            raise ValueError(
                f"TrainConfig.validate_every must be >= 1 step or None, got {self.validate_every}"
            )
        if self.validations < 1:
            raise ValueError(f"TrainConfig.validations must be >= 1, got {self.validations}")
        if not 0 < self.validation_share <= 1:
            raise ValueError(
                f"TrainConfig.validation_share must be in (0, 1], got {self.validation_share}"
            )
        if self.guide is not None and not self.guide >= 0:
            raise ValueError(f"TrainConfig.guide must be >= 0 or None, got {self.guide}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"TrainConfig.workers must be >= 1 or None, got {self.workers}")
        if self.optimizer not in ("adamw", "adabelief"):
            raise ValueError(
                f"TrainConfig.optimizer must be 'adamw' or 'adabelief', got {self.optimizer!r}"
            )
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(
                f"TrainConfig.precision must be auto, fp32, bf16 or fp16, got {self.precision!r}"
            )
        if self.steps is None and self.budget is None:
            raise ValueError("TrainConfig needs steps or budget (seconds) to know when to stop")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"TrainConfig.steps must be >= 1, got {self.steps}")
        if self.budget is not None and self.budget <= 0:
            raise ValueError(f"TrainConfig.budget must be > 0 seconds, got {self.budget}")
        if self.crop < 8 or self.crop % 8:
            raise ValueError(f"TrainConfig.crop must be a multiple of 8 and >= 8, got {self.crop}")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.rare_fraction <= 1.0:
            raise ValueError(
                f"TrainConfig.rare_fraction must be in [0, 1], got {self.rare_fraction}"
            )
        if not 0.0 <= self.class_weight_power <= 1.0:
            raise ValueError(
                f"TrainConfig.class_weight_power must be in [0, 1], got {self.class_weight_power}"
            )
        if self.loss not in ("jaccard", "jaccard+ce"):
            raise ValueError(
                f"TrainConfig.loss must be 'jaccard' or 'jaccard+ce', got {self.loss!r}"
            )
        if not self.axes or any(a not in (0, 1, 2) for a in self.axes):
            raise ValueError(
                f"TrainConfig.axes must be a non-empty subset of (0, 1, 2), got {self.axes}"
            )


@dataclass
class AnnotatedVolume:
    """A normalised float32 volume and its annotations (0 = not annotated, 1..C)."""

    image: npt.NDArray[np.float32]
    labels: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        if self.image.shape != self.labels.shape or self.image.ndim != 3:
            raise ValueError(
                f"annotations shape {self.labels.shape} must equal the volume shape {self.image.shape} (3D)"
            )
        # NaN in a training image would make every loss and gradient NaN: refuse it here.
        check_finite(self.image, name="training image")


class CropSampler:
    """Random training crops centred near annotated voxels, with rare phases oversampled.

    With probability ``rare_fraction`` a crop is centred on a voxel of a phase chosen uniformly among
    the annotated phases (so a 0.5 % phase is seen as often as the matrix); otherwise on a random
    annotated voxel. 2D models get slices along ``axes``; 2.5D ones the ``in_channels`` neighbouring
    slices as channels; 3D ones cubes. With ``guided``, labels ``C+1..2C`` are guesses (see
    :mod:`~.losses`): they travel with the crops but are neither counted nor crop centres.
    """

    def __init__(
        self,
        volumes: Sequence[AnnotatedVolume],
        *,
        n_phases: int,
        ndim: int = 2,
        in_channels: int = 1,
        crop: int = 128,
        axes: Sequence[int] = (0, 1, 2),
        rare_fraction: float = 0.3,
        augment: bool = True,
        seed: int = 0,
        max_points_per_phase: int = 200_000,
        guided: bool = False,
    ) -> None:
        if not volumes:
            raise ValueError("no training volumes given")
        self.volumes = list(volumes)
        self.n_phases, self.ndim, self.in_channels, self.crop = n_phases, ndim, in_channels, crop
        self.axes, self.rare_fraction, self.augment = tuple(axes), rare_fraction, augment
        self.rng = np.random.default_rng(seed)
        # Flat indices of annotated voxels, per (volume, phase), subsampled to bound memory.
        self.points: list[list[npt.NDArray[np.int64]]] = []
        counts = np.zeros(n_phases + 1, np.int64)
        top = 2 * n_phases if guided else n_phases
        for v in self.volumes:
            lab = v.labels.ravel()
            if lab.size and int(lab.max()) > top:
                raise ValueError(
                    f"annotations hold phase id {int(lab.max())} but the model has {n_phases} phases (1..{n_phases})"
                )
            c = np.bincount(lab, minlength=top + 1)[: n_phases + 1]
            counts += c
            per_phase = []
            for p in range(1, n_phases + 1):
                idx = np.flatnonzero(lab == p) if c[p] else np.empty(0, np.int64)
                if idx.size > max_points_per_phase:
                    idx = self.rng.choice(idx, max_points_per_phase, replace=False)
                per_phase.append(idx)
            self.points.append(per_phase)
        self.counts = counts[1:]
        if self.counts.sum() == 0:
            raise ValueError(
                "no annotated voxel: paint at least a few voxels of each phase before training"
            )
        self.present = [p for p in range(n_phases) if self.counts[p] > 0]

    def _centre(self) -> tuple[int, tuple[int, int, int]]:
        rng = self.rng
        if rng.random() < self.rare_fraction:
            phase = self.present[int(rng.integers(len(self.present)))]
            options = [i for i, pts in enumerate(self.points) if pts[phase].size]
        else:
            phase = -1
            options = [i for i, pts in enumerate(self.points) if any(p.size for p in pts)]
        vi = options[int(rng.integers(len(options)))]
        pts = self.points[vi]
        if phase < 0:
            sizes = np.array([p.size for p in pts], np.float64)
            phase = int(rng.choice(len(pts), p=sizes / sizes.sum()))
        flat = int(pts[phase][int(rng.integers(pts[phase].size))])
        return vi, tuple(int(i) for i in np.unravel_index(flat, self.volumes[vi].labels.shape))  # type: ignore[return-value]

    def _window(self, centre: int, length: int) -> tuple[int, int]:
        """Start of a crop that contains ``centre`` at a random position, clipped to the volume."""
        c = self.crop
        if length <= c:
            return 0, length
        lo = max(0, centre - c + 1)
        hi = min(length - c, centre)
        start = int(self.rng.integers(lo, hi + 1))
        return start, start + c

    def sample_one(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        vi, centre = self._centre()
        v = self.volumes[vi]
        shape = v.image.shape
        if self.ndim == 3:
            win = [self._window(centre[a], shape[a]) for a in range(3)]
            region = tuple(slice(a, b) for a, b in win)
            img, lab = v.image[region][None], v.labels[region]
        else:
            axis = self.axes[int(self.rng.integers(len(self.axes)))]
            img_v = np.moveaxis(v.image, axis, 0)
            lab_v = np.moveaxis(v.labels, axis, 0)
            c3 = (centre[axis], *(centre[a] for a in range(3) if a != axis))
            win = [self._window(c3[a], img_v.shape[a]) for a in (1, 2)]
            region = tuple(slice(a, b) for a, b in win)
            h = self.in_channels // 2
            n = img_v.shape[0]
            chans = [min(max(c3[0] + d, 0), n - 1) for d in range(-h, h + 1)]
            img = np.stack([img_v[ch][region] for ch in chans])
            lab = lab_v[c3[0]][region]
        # Volumes smaller than the crop: mirror the image, leave the extra labels unannotated.
        pad = [(0, self.crop - s) for s in lab.shape]
        if any(p[1] for p in pad):
            img = np.pad(img, [(0, 0), *pad], mode="symmetric")
            lab = np.pad(lab, pad, mode="constant")
        if self.augment:
            img, lab_aug = random_dihedral(img, lab, self.rng)
            img = random_intensity(img, self.rng)
            return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(lab_aug, np.int64)
        return np.ascontiguousarray(img, np.float32), np.ascontiguousarray(lab, np.int64)

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sample_one() for _ in range(n)]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(
            np.stack([p[1] for p in pairs])
        )


@dataclass(frozen=True)
class TrainProgress:
    """One training step (and, every ``validate_every`` steps, a validation)."""

    step: int
    loss: float
    learning_rate: float
    elapsed: float
    eta: float
    validation: tuple[float, ...] | None = None  # per-phase Jaccard, when validated at this step
    best_mean: float | None = None


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    best_validation: tuple[float, ...] | None
    best_step: int
    steps: int
    seconds: float
    voxels_seen: int
    history: list[TrainProgress] = field(default_factory=list)
    stopped: Literal["steps", "budget", "patience", "cancelled"] = "steps"
    #: Per-phase scores of the network as given, before the first step (``validate_start``).
    start_validation: tuple[float, ...] | None = None

    @property
    def kept_start(self) -> bool:
        """True when no step beat the network as given: its weights were returned unchanged."""
        return self.start_validation is not None and self.best_step == 0


def _nanmean(v: Sequence[float]) -> float:
    a = np.asarray(v, np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else float("nan")


def iter_train(
    network: nn.Module,
    sampler: CropSampler,
    config: TrainConfig,
    *,
    validate: Callable[[nn.Module], Sequence[float]] | None = None,
    validate_start: bool = False,
    rank: Callable[[Sequence[float]], float] | None = None,
    cancel: CancelToken | None = None,
    device: torch.device | str = "cpu",
    started: float | None = None,
) -> Generator[TrainProgress, None, TrainResult]:
    """Train ``network`` in place, yielding progress; return the best weights seen.

    ``validate(network) -> per-phase Jaccard`` is called every ``config.validate_every`` steps and
    at the end; the weights with the best mean are kept. With ``validate_start`` the network is also
    scored before the first step, and kept if no step beats it (``best_step == 0``): training never
    returns something worse, on the held-out voxels, than what it was given. Without ``validate`` the
    last weights are kept. ``rank(scores) -> float`` ranks two validations (default: the mean over
    the phases).

    ``config.budget`` counts from ``started`` (a ``time.perf_counter()`` value; default: now), so a
    caller's preparation is part of the budget; a step (and the closing validation) is only started
    if it is expected to end within the budget, but there is always at least one step.
    """
    from napari_tomoseg.core.learn.parallel import StepRunner, default_workers
    from napari_tomoseg.core.segment import resolve_precision

    torch.manual_seed(config.seed)
    device = torch.device(device)
    network.to(device).train()
    optimiser = _optimiser(network, config)
    # Mixed precision where the hardware has it (GPUs, CPUs with native bf16): emulated bf16 on an
    # AVX2 CPU is ~10x slower than fp32. fp16 needs loss scaling; bf16 does not.
    dtype = resolve_precision(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    counts = torch.as_tensor(sampler.counts)
    # Frequency ** -power weights lift rare phases in sparse annotations; they also push ambiguous
    # boundary voxels towards the rarer phase, so fully labelled data may prefer power 0.
    if config.class_prior is None:
        ce_weight = phase_weights(counts, config.class_weight_power)
    else:
        ce_weight = prior_corrected_weights(
            counts, list(config.class_prior), config.class_weight_power
        )
    ce_weight = ce_weight.to(device)
    workers = config.workers or default_workers(device, config.batch_size)
    rank = rank or _nanmean
    t0 = time.perf_counter() if started is None else started
    best_state = copy.deepcopy(network.state_dict())
    best_mean, best_val, best_step, since_best = -math.inf, None, 0, 0
    start_val: tuple[float, ...] | None = None
    history: list[TrainProgress] = []
    step, voxels = 0, 0
    step_seconds, validation_seconds = 0.0, 0.0  # the latest step's and validation's durations
    validating = 0.0  # seconds spent validating so far
    stopped: Literal["steps", "budget", "patience", "cancelled"] = "steps"

    def progress_fraction() -> float:
        fr = []
        if config.steps:
            fr.append(step / config.steps)
        if config.budget:
            fr.append((time.perf_counter() - t0) / config.budget)
        return min(1.0, max(fr))

    spread = 0  # validations spread over the run so far (``validate_every=None``)

    def validation_due() -> bool:
        nonlocal spread
        if config.validate_every is not None:
            return step % config.validate_every == 0
        due = int(progress_fraction() * config.validations + 1e-9)
        if due <= spread:
            return False
        spread = due
        # Only timed runs: a step run validates at the same steps every time.
        return not (
            config.budget and validating > config.validation_share * (time.perf_counter() - t0)
        )

    def out_of_time() -> bool:
        """Would the next step (and the validation closing the run) end past the budget?"""
        if not config.budget or step == 0:
            return False
        closing = validation_seconds if validate is not None else 0.0
        return time.perf_counter() - t0 + step_seconds + closing > config.budget

    runner = StepRunner(
        network,
        device=device,
        dtype=dtype,
        workers=workers,
        cross_entropy=config.loss == "jaccard+ce",
        weight=ce_weight,
        guide=config.guide,
    )

    def do_validate() -> tuple[float, ...] | None:
        nonlocal best_mean, best_val, best_step, best_state, since_best
        nonlocal validation_seconds, validating
        if validate is None:
            return None
        tv = time.perf_counter()
        network.eval()
        with runner.all_threads():
            scores = tuple(float(s) for s in validate(network))
        network.train()
        validation_seconds = time.perf_counter() - tv
        validating += validation_seconds
        m = rank(scores)
        if m > best_mean:
            best_mean, since_best = m, 0
            if config.keep == "best" or step == 0:
                best_val, best_step = scores, step
                best_state = copy.deepcopy(network.state_dict())
        else:
            since_best += 1
        return scores

    try:
        if validate is not None and validate_start:
            start_val = do_validate()
            since_best = 0
        while True:
            frac = progress_fraction()
            if (frac >= 1.0 and step > 0) or out_of_time():
                stopped = "steps" if config.steps and step >= config.steps else "budget"
                break
            if cancel is not None and cancel.cancelled:
                stopped = "cancelled"
                break
            ts = time.perf_counter()
            # Linear warm-up over ``warmup`` steps or the first 5 % of the budget, whichever ends
            # first (a 40 s run on a slow CPU makes a few dozen steps), then cosine decay.
            warm = min(1.0, max((step + 1) / max(1, config.warmup), frac / WARMUP_FRACTION))
            frac = min(frac, 1.0)
            lr = config.learning_rate * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in optimiser.param_groups:
                g["lr"] = lr
            x, y = sampler.sample(config.batch_size)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            optimiser.zero_grad(set_to_none=True)
            loss = runner.forward_backward(
                x, y, scale=float(scaler.get_scale()) if scaler.is_enabled() else 1.0
            )
            scaler.step(optimiser)
            scaler.update()
            runner.sync()
            step += 1
            voxels += int(y.numel())
            step_seconds = time.perf_counter() - ts
            val = do_validate() if validate is not None and validation_due() else None
            elapsed = time.perf_counter() - t0
            frac = progress_fraction()
            event = TrainProgress(
                step,
                loss,
                lr,
                elapsed,
                elapsed * (1 - frac) / frac if frac > 0 else math.nan,
                val,
                None if best_mean == -math.inf else best_mean,
            )
            history.append(event)
            yield event
            if config.patience is not None and val is not None and since_best >= config.patience:
                stopped = "patience"
                break
        if validate is not None and (not history or history[-1].validation is None):
            val = do_validate()
            if history and val is not None:
                # The closing validation belongs to the last step: the curve shows every validation.
                history[-1] = dataclasses.replace(
                    history[-1],
                    validation=val,
                    best_mean=best_mean,
                    elapsed=time.perf_counter() - t0,
                    eta=0.0,
                )
                yield history[-1]
    finally:
        runner.close()
    last = history[-1].validation if history else None
    if validate is None or (
        config.keep == "last"
        and last is not None
        and (start_val is None or rank(last) >= rank(start_val))
    ):
        best_state, best_step, best_val = copy.deepcopy(network.state_dict()), step, last
    network.load_state_dict(best_state)
    network.eval()
    return TrainResult(
        best_state,
        best_val,
        best_step,
        step,
        time.perf_counter() - t0,
        voxels,
        history,
        stopped,
        start_validation=start_val,
    )


def preload_optimiser() -> threading.Thread | None:
    """Start importing, in the background, what torch's first optimiser loads (``torch._dynamo``).

    Torch's optimisers import ``torch._dynamo`` when the first one is made: 2-3 s on a 2-core CPU,
    which a time budget that counts the preparation would take from the steps. Started before the
    preparation (reading slices, ring removal, scoring the starting model), the import overlaps it.
    Returns the thread, or None when there is nothing to load.
    """
    if "torch._dynamo" in sys.modules:
        return None
    thread = threading.Thread(
        target=importlib.import_module,
        args=("torch._dynamo",),
        name="tomoseg-preload",
        daemon=True,
    )
    thread.start()
    return thread


def _optimiser(network: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in network.parameters() if p.requires_grad]
    if config.optimizer == "adabelief":
        try:
            from pytorch_optimizer import AdaBelief
        except ImportError as err:  # pragma: no cover - declared dependency
            raise ImportError(
                "the AdaBelief optimiser needs the 'pytorch-optimizer' package: pip install pytorch-optimizer"
            ) from err
        return AdaBelief(
            params, lr=config.learning_rate, weight_decay=config.weight_decay, weight_decouple=True
        )
    # One fused kernel for all parameters: the U-Net has ~130 small tensors, each a loop otherwise.
    return torch.optim.AdamW(
        params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True
    )


def fit(
    network: nn.Module, sampler: CropSampler, config: TrainConfig, **kwargs: Any
) -> TrainResult:
    """Run :func:`iter_train` to completion."""
    return run_to_completion(iter_train(network, sampler, config, **kwargs))
