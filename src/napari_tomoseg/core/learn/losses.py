"""Losses on sparse annotations: the published soft Jaccard ("jaccard2") and weighted cross-entropy.

logits (N, C, *spatial) + targets (N, *spatial; 0 = not annotated, 1..C) -> scalar loss.
Unannotated voxels contribute nothing to either loss or its gradient.

Both losses are functions of sums over the batch (:func:`loss_terms`), so a batch split into shards
that are computed in parallel gives exactly the loss of the whole batch: sum the shards' terms, then
:func:`loss_from_terms`.

Guided targets: with sparse annotations (strokes), targets ``C+1..2C`` mark voxels nobody annotated
that the starting model confidently calls phase ``target - C``. They enter only a separate
cross-entropy, weighted by ``guide``, that keeps the model near what it already got right where the
strokes say nothing; the Jaccard and the annotated cross-entropy never see them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(logits: torch.Tensor, target: torch.Tensor) -> None:
    if (
        logits.ndim != target.ndim + 1
        or logits.shape[0] != target.shape[0]
        or logits.shape[2:] != target.shape[1:]
    ):
        raise ValueError(
            f"logits {tuple(logits.shape)} and targets {tuple(target.shape)} do not match"
        )


def jaccard_terms(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-phase ``I = sum y p`` and ``sum y^2 + sum p^2`` over the annotated voxels of a batch."""
    _check(logits, target)
    n_phases = logits.shape[1]
    annotated = (target > 0).unsqueeze(1).to(logits.dtype)
    p = torch.softmax(logits.float(), dim=1) * annotated
    y = F.one_hot((target.clamp(min=1) - 1).long(), n_phases).movedim(-1, 1).to(p.dtype) * annotated
    dims = [0, *range(2, logits.ndim)]
    inter = (y * p).sum(dims)
    total = (y * y).sum(dims) + (p * p).sum(dims)
    return inter, total


def jaccard_from_terms(
    inter: torch.Tensor, total: torch.Tensor, *, smooth: float = 1.0
) -> torch.Tensor:
    """The soft Jaccard loss of :func:`jaccard_terms` (summed over shards of a batch)."""
    return (1.0 - (inter + smooth) / (total - inter + smooth)).mean()


def soft_jaccard_loss(
    logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0
) -> torch.Tensor:
    """Mean over phases of ``1 - (I + s) / (sum y^2 + sum p^2 - I + s)`` on annotated voxels.

    ``y`` is the one-hot target, ``p`` the softmax, ``I = sum y p``. Averaging over phases makes a phase
    at 0.5 % of voxels weigh as much as the matrix (Bertoldo et al. 2021, "jaccard2").
    """
    return jaccard_from_terms(*jaccard_terms(logits, target), smooth=smooth)


def cross_entropy_terms(
    logits: torch.Tensor, target: torch.Tensor, *, weight: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of the annotated voxels' negative log-likelihoods, and the sum of their weights."""
    _check(logits, target)
    t = target.long() - 1  # 0 (not annotated) -> -1, ignored
    nll = F.cross_entropy(logits.float(), t, weight=weight, ignore_index=-1, reduction="sum")
    annotated = t[t >= 0]
    if weight is None:
        den = torch.tensor(float(annotated.numel()), device=logits.device)
    else:
        den = weight.to(logits.device)[annotated].sum()
    return nll, den


def cross_entropy_from_terms(nll: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of :func:`cross_entropy_terms`: 0 when nothing is annotated."""
    return nll / den.clamp(min=1e-12)  # nothing annotated: nll is 0, and so is the loss


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy over annotated voxels (``target > 0``), optionally weighted per phase."""
    return cross_entropy_from_terms(*cross_entropy_terms(logits, target, weight=weight))


def split_guide(target: torch.Tensor, n_phases: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Annotated targets (``0..C``) and guided ones (``0..C``, 0 = no guess) of a guided target map."""
    guided = target > n_phases
    zero = torch.zeros_like(target)
    return torch.where(guided, zero, target), torch.where(guided, target - n_phases, zero)


def loss_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    cross_entropy: bool = True,
    guided: bool = False,
) -> torch.Tensor:
    """The sums a batch's loss is made of, as one vector: ``[I (C), total (C), nll, weights]``,
    and with ``guided`` targets (``C+1..2C``, see the module) two more: the guided voxels' summed
    negative log-likelihood and their number.

    Sum the vectors of a batch's shards and give the sum to :func:`loss_from_terms`.
    """
    guide = None
    if guided:
        target, guide = split_guide(target, logits.shape[1])
    inter, total = jaccard_terms(logits, target)
    if cross_entropy:
        nll, den = cross_entropy_terms(logits, target, weight=weight)
    else:
        nll = den = torch.zeros((), device=logits.device)
    parts = [inter, total, nll.reshape(1), den.reshape(1).to(inter.dtype)]
    if guide is not None:
        g_nll, g_den = cross_entropy_terms(logits, guide)
        parts += [g_nll.reshape(1), g_den.reshape(1).to(inter.dtype)]
    return torch.cat(parts)


def loss_from_terms(
    terms: torch.Tensor, *, cross_entropy: bool = True, guide: float | None = None
) -> torch.Tensor:
    """Soft Jaccard (+ weighted cross-entropy) of the whole batch from its summed :func:`loss_terms`;
    with ``guide`` (terms of guided targets), plus ``guide`` times the guided voxels' mean
    cross-entropy."""
    extra = 2 if guide is not None else 0
    c = (terms.shape[0] - 2 - extra) // 2
    loss = jaccard_from_terms(terms[:c], terms[c : 2 * c])
    if cross_entropy:
        loss = loss + cross_entropy_from_terms(terms[2 * c], terms[2 * c + 1])
    if guide is not None:
        loss = loss + guide * cross_entropy_from_terms(terms[2 * c + 2], terms[2 * c + 3])
    return loss


def phase_weights(counts: torch.Tensor | list[int], power: float = 0.5) -> torch.Tensor:
    """Per-phase weights ``frequency ** -power`` normalised to mean 1; absent phases get weight 0.

    ``power = 0.5`` lifted a 4 % phase from never learned to Jaccard 0.54 in our few-slice probe.
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    freq = c / c.sum().clamp(min=1)
    w = torch.where(freq > 0, freq.clamp(min=1e-6) ** -power, torch.zeros_like(freq))
    present = w > 0
    if present.any():
        w = w / w[present].mean()
    return w.float()


def prior_corrected_weights(
    counts: torch.Tensor | list[int], prior: torch.Tensor | list[float], power: float = 0.5
) -> torch.Tensor:
    """Per-phase weights for annotations whose phase shares differ from the volume's (``prior``).

    Strokes are painted through every phase, so a phase filling 0.5 % of a slice can hold a tenth of
    the annotated voxels; a loss weighted by the annotations' own shares then learns that phase as
    20x more common than it is, and grows it into its surroundings. Each phase's weight is
    :func:`phase_weights` of the ``prior`` times ``prior / annotated share``: the weighted loss is
    the one whole slices of that prior would give. Equal to ``phase_weights(counts, power)`` when the
    annotations have the prior's shares (whole slices).
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    share = c / c.sum().clamp(min=1)
    pi = torch.as_tensor(prior, dtype=torch.float64).clamp(min=0)
    pi = torch.where(share > 0, pi.clamp(min=1e-12), torch.zeros_like(pi))  # absent phases: 0
    w = phase_weights(pi, power).double() * pi / share.clamp(min=1e-12)
    present = w > 0
    if present.any():
        w = w / w[present].mean()
    return w.float()
