"""The modular U-Net of the published method (2D, 2.5D and 3D) and what is derived from its shape.

UNetConfig -> ModularUNet (depth-D encoder of residual blocks, strided-conv down, transposed-conv
up concatenated after the skip, 1x1 head) -> logits (N, n_phases, *spatial).
inflate_to_slices turns a 2D network into a 2.5D one; receptive_halo is the default tile overlap.

Architecture: Bertoldo et al., Frontiers in Materials 8:761229, 2021.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`ModularUNet`.

    Parameters
    ----------
    ndim : 2 or 3
        Spatial dimensions of the convolutions.
    in_channels : int
        1 for a plain 2D or 3D model; k (odd) for 2.5D, the k neighbouring slices as channels.
    n_phases : int
        Output channels (logits), one per phase.
    depth : int
        Number of down-sampling steps; inputs must be multiples of ``2**depth`` (tiling pads).
    base_filters : int
        F: level i of the encoder outputs F * 2**(i + 1) channels.
    residual, batch_norm : bool
        Projection shortcut in every block; batch norm after every convolution.
    dropout : float
        Dropout probability between the two convolutions of a block.
    """

    ndim: int = 2
    in_channels: int = 1
    n_phases: int = 3
    depth: int = 3
    base_filters: int = 8
    residual: bool = True
    batch_norm: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.ndim not in (2, 3):
            raise ValueError(f"UNetConfig.ndim must be 2 or 3, got {self.ndim}")
        if self.in_channels < 1:
            raise ValueError(f"UNetConfig.in_channels must be >= 1, got {self.in_channels}")
        if not 1 <= self.n_phases <= 254:
            raise ValueError(f"UNetConfig.n_phases must be in 1..254, got {self.n_phases}")
        if not 1 <= self.depth <= 6:
            raise ValueError(f"UNetConfig.depth must be in 1..6, got {self.depth}")
        if self.base_filters < 1:
            raise ValueError(f"UNetConfig.base_filters must be >= 1, got {self.base_filters}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def multiple(self) -> int:
        """Spatial sizes must be multiples of this (2**depth)."""
        return 2**self.depth

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> UNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net settings {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


def _conv(ndim: int) -> type[nn.Module]:
    return nn.Conv2d if ndim == 2 else nn.Conv3d


def _norm(ndim: int, channels: int, enabled: bool) -> nn.Module:
    if not enabled:
        return nn.Identity()
    return nn.BatchNorm2d(channels) if ndim == 2 else nn.BatchNorm3d(channels)


class Block(nn.Module):
    """conv3-BN-ReLU-(dropout)-conv3-BN, plus a conv3-BN projection shortcut, summed, then ReLU."""

    def __init__(self, cfg: UNetConfig, cin: int, f1: int, f2: int) -> None:
        super().__init__()
        conv, nd, bn = _conv(cfg.ndim), cfg.ndim, cfg.batch_norm
        dropout: nn.Module
        if cfg.dropout > 0:
            dropout = nn.Dropout2d(cfg.dropout) if nd == 2 else nn.Dropout3d(cfg.dropout)
        else:
            dropout = nn.Identity()
        self.body = nn.Sequential(
            conv(cin, f1, 3, padding=1),
            _norm(nd, f1, bn),
            nn.ReLU(inplace=True),
            dropout,
            conv(f1, f2, 3, padding=1),
            _norm(nd, f2, bn),
        )
        self.shortcut = (
            nn.Sequential(conv(cin, f2, 3, padding=1), _norm(nd, f2, bn)) if cfg.residual else None
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y)


class ModularUNet(nn.Module):
    """The published modular U-Net; returns logits of shape (N, n_phases, *spatial)."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        conv, nd, bn, f = _conv(cfg.ndim), cfg.ndim, cfg.batch_norm, cfg.base_filters
        convT = nn.ConvTranspose2d if nd == 2 else nn.ConvTranspose3d
        self.encoder = nn.ModuleList()
        self.down = nn.ModuleList()
        c = cfg.in_channels
        for i in range(cfg.depth):
            c_out = f * 2 ** (i + 1)
            self.encoder.append(Block(cfg, c, f * 2**i, c_out))
            self.down.append(
                nn.Sequential(
                    conv(c_out, c_out, 3, stride=2, padding=1),
                    _norm(nd, c_out, bn),
                    nn.ReLU(inplace=True),
                )
            )
            c = c_out
        self.bottleneck = Block(cfg, c, c, 2 * c)
        c = 2 * c
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(cfg.depth)):
            c_up, c_skip = f * 2 ** (i + 2), f * 2 ** (i + 1)
            self.up.append(
                nn.Sequential(
                    convT(c, c_up, 3, stride=2, padding=1, output_padding=1),
                    _norm(nd, c_up, bn),
                    nn.ReLU(inplace=True),
                )
            )
            self.decoder.append(Block(cfg, c_skip + c_up, c_skip, c_skip))
            c = c_skip
        self.head = conv(c, cfg.n_phases, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.cfg.multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(
                f"spatial size {tuple(x.shape[2:])} must be a multiple of {m} (2**depth)"
            )
        skips = []
        for enc, down in zip(self.encoder, self.down, strict=True):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.bottleneck(x)
        for up, dec in zip(self.up, self.decoder, strict=True):
            x = torch.cat([skips.pop(), up(x)], dim=1)
            x = dec(x)
        return self.head(x)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def receptive_halo(cfg: UNetConfig) -> int:
    """A conservative margin (voxels) beyond which context barely changes a prediction.

    Used as the default tile overlap; the exact receptive field of a depth-3 net is much larger
    but its effective (weighted) extent is a few tens of voxels.
    """
    return math.ceil(4 * 2**cfg.depth)


def inflate_to_slices(
    network: ModularUNet, k: int = 3, *, spread: Literal["binomial", "centre"] = "binomial"
) -> ModularUNet:
    """A 2.5D copy of a 2D network that takes ``k`` neighbouring slices as channels.

    The first convolutions' kernels are spread over the k slices with binomial weights (1-2-1 for k=3),
    so the copy starts as the 2D network applied to a slice lightly smoothed across slices, and
    fine-tuning then learns how much of the neighbouring slices to use (it sees 3D context that a
    2D network cannot). ``spread="centre"`` puts the whole kernel on the centre slice instead: the copy
    starts as exactly the 2D network. The original network is left untouched.
    """
    if network.cfg.ndim != 2 or network.cfg.in_channels != 1:
        raise ValueError(
            f"only a 2D network with one input channel can be inflated, got ndim={network.cfg.ndim}, "
            f"in_channels={network.cfg.in_channels}"
        )
    if k < 3 or k % 2 == 0:
        raise ValueError(f"k must be odd and >= 3, got {k}")
    if spread == "binomial":
        weights = torch.tensor([math.comb(k - 1, i) for i in range(k)], dtype=torch.float32)
        weights /= weights.sum()
    elif spread == "centre":
        weights = torch.zeros(k)
        weights[k // 2] = 1.0
    else:
        raise ValueError(f"spread must be 'binomial' or 'centre', got {spread!r}")
    new = copy.deepcopy(network)
    first = new.encoder[0]
    assert isinstance(first, Block)
    convs = [first.body[0]] + ([first.shortcut[0]] if first.shortcut is not None else [])
    for conv in convs:
        assert isinstance(conv, nn.Conv2d)
        w = conv.weight.data  # (out, 1, 3, 3)
        conv.weight = nn.Parameter(w * weights.view(1, k, 1, 1).to(w))
        conv.in_channels = k
    new.cfg = replace(network.cfg, in_channels=k)
    return new


def fold_batch_norm(network: ModularUNet) -> ModularUNet:
    """A copy of ``network`` with every batch norm folded into the convolution before it.

    The copy computes what ``network.eval()`` computes, with one operation less per convolution, and
    trains with the norms frozen: what fine-tuning from a few crops of a few slices wants (batch
    statistics of 8 crops are noisy, and train-mode statistics would differ from the inference ones).
    The norms are replaced by identities; :func:`unfold_batch_norm` puts them back.
    """
    new = copy.deepcopy(network)
    folded: list[tuple[str, int, int, float, float | None]] = []
    with torch.no_grad():
        for name, seq in new.named_modules():
            if not isinstance(seq, nn.Sequential):
                continue
            for i in range(1, len(seq)):
                norm, conv = seq[i], seq[i - 1]
                if not isinstance(norm, nn.BatchNorm2d | nn.BatchNorm3d):
                    continue
                if not isinstance(
                    conv, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d
                ):
                    raise ValueError(f"batch norm {name}.{i} does not follow a convolution")
                var = (
                    norm.running_var
                    if norm.running_var is not None
                    else torch.ones(norm.num_features)
                )
                mean = norm.running_mean if norm.running_mean is not None else torch.zeros_like(var)
                scale = torch.rsqrt(var + norm.eps)
                if norm.affine:
                    scale = scale * norm.weight
                shape = [1] * conv.weight.ndim
                out_axis = 1 if isinstance(conv, nn.ConvTranspose2d | nn.ConvTranspose3d) else 0
                shape[out_axis] = -1
                conv.weight.mul_(scale.view(shape))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
                new_bias = (bias - mean) * scale + (norm.bias if norm.affine else 0.0)
                conv.bias = nn.Parameter(new_bias.detach().clone())
                seq[i] = nn.Identity()
                folded.append((name, i, norm.num_features, norm.eps, norm.momentum))
    new._folded_norms = folded  # type: ignore[assignment]
    return new


def unfold_batch_norm(network: ModularUNet) -> ModularUNet:
    """``network`` (folded by :func:`fold_batch_norm`) with its norms back, as identities in eval mode.

    Each restored norm has mean 0, variance ``1 - eps``, weight 1 and bias 0, so the network computes
    what the folded one did and keeps the architecture (and model-file keys) it had. In place; returned.
    """
    folded = getattr(network, "_folded_norms", None)
    if not folded:
        return network
    modules = dict(network.named_modules())
    ndim = network.cfg.ndim
    for name, i, features, eps, momentum in folded:
        seq = modules[name]
        assert isinstance(seq, nn.Sequential)
        ref = seq[i - 1].weight
        assert isinstance(ref, torch.Tensor)
        norm = (nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d)(
            features, eps=eps, momentum=momentum
        ).to(device=ref.device)
        with torch.no_grad():
            norm.running_var.fill_(1.0 - eps)  # type: ignore[union-attr]
        seq[i] = norm.eval()
    del network._folded_norms
    return network
