"""One training step's forward and backward, spread over the CPU's cores as whole shards of the batch.

batch -> one shard per replica of the network (each in its own thread, each op single-threaded)
-> per-shard loss terms -> summed in a fixed order -> loss, and its gradient w.r.t. the terms
-> backward of every shard (in parallel) -> the replicas' gradients summed into the network.
After the optimiser step, :meth:`StepRunner.sync` copies the weights back to the replicas.

Why: the U-Net has few channels per layer, so each convolution is too little work to share between
cores; OpenMP splits every layer and waits at a barrier after each, and waits far longer when
another process is busy on one of the cores. A whole shard per core has no barrier inside the step.
The loss of the sharded batch is the loss of the whole batch (:func:`~.losses.loss_terms` are sums),
and the shards are summed in a fixed order, so a run of N steps gives the same weights every time.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch import nn

from napari_tomoseg.core.learn.losses import loss_from_terms, loss_terms

__all__ = ["StepRunner", "default_workers"]


def default_workers(device: torch.device, batch_size: int) -> int:
    """Shards per step: one per CPU thread torch may use (at most one per crop); 1 on a GPU."""
    if device.type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), batch_size))


class StepRunner:
    """Forward + backward of a batch into ``network``'s gradients, on ``workers`` shards.

    Parameters
    ----------
    network : nn.Module
        Trained in place; its ``.grad`` receive the whole batch's gradient.
    device : torch.device
    dtype : torch.dtype
        Autocast precision (float32: none).
    workers : int
        Shards (threads) per step. With more than one, torch runs single-threaded inside each shard
        while the runner is open (:meth:`all_threads` gives the threads back, e.g. to validate).
    cross_entropy : bool
        Add the weighted cross-entropy to the soft Jaccard loss.
    weight : torch.Tensor or None
        Per-phase cross-entropy weights.
    guide : float or None
        Weight of the guided targets' cross-entropy (targets ``C+1..2C``, :mod:`~.losses`); None:
        the targets hold annotations only.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        device: torch.device,
        dtype: torch.dtype,
        workers: int = 1,
        cross_entropy: bool = True,
        weight: torch.Tensor | None = None,
        guide: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.network = network
        self.device = device
        self.dtype = dtype
        self.workers = workers
        self.cross_entropy = cross_entropy
        self.weight = weight
        self.guide = guide
        self.channels_last = getattr(getattr(network, "cfg", None), "ndim", 2) == 2
        if self.channels_last:
            network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.replicas = [network] + [copy.deepcopy(network) for _ in range(workers - 1)]
        self._pool = (
            ThreadPoolExecutor(workers - 1, thread_name_prefix="tomoseg-train")
            if workers > 1
            else None
        )
        self._threads = torch.get_num_threads()
        if workers > 1:
            torch.set_num_threads(1)

    # -- the step ---------------------------------------------------------------------------------

    def _terms(self, replica: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        use_amp = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=use_amp):
            logits = replica(x)
        return loss_terms(
            logits.float(),
            y,
            weight=self.weight,
            cross_entropy=self.cross_entropy,
            guided=self.guide is not None,
        )

    def _loss(self, terms: torch.Tensor) -> torch.Tensor:
        return loss_from_terms(terms, cross_entropy=self.cross_entropy, guide=self.guide)

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> float:
        """Accumulate the gradient of the batch's loss (times ``scale``) into the network; return the loss."""
        if self.workers == 1 or x.shape[0] < 2:
            loss = self._loss(self._terms(self.network, x, y))
            (loss * scale).backward()
            return float(loss.detach())
        assert self._pool is not None
        xs, ys = torch.tensor_split(x, self.workers), torch.tensor_split(y, self.workers)
        n = sum(1 for part in xs if part.shape[0])
        futures = [
            self._pool.submit(self._terms, r, xi, yi)
            for r, xi, yi in zip(self.replicas[1:n], xs[1:n], ys[1:n], strict=True)
        ]
        parts = [self._terms(self.network, xs[0], ys[0])] + [f.result() for f in futures]
        total = parts[0].detach().clone()
        for part in parts[1:]:
            total += part.detach()
        total.requires_grad_(True)
        loss = self._loss(total)
        (grad,) = torch.autograd.grad(loss * scale, total)
        futures = [self._pool.submit(part.backward, grad) for part in parts[1:]]
        parts[0].backward(grad)
        for f in futures:
            f.result()
        with torch.no_grad():
            mine = list(self.network.parameters())
            for replica in self.replicas[1:n]:
                for p, q in zip(mine, replica.parameters(), strict=True):
                    if q.grad is not None:
                        p.grad = q.grad.clone() if p.grad is None else p.grad.add_(q.grad)
                        q.grad = None
        return float(loss.detach())

    def sync(self) -> None:
        """After the optimiser step: the replicas take the network's weights (and mean norm statistics)."""
        if self.workers == 1:
            return
        with torch.no_grad():
            mine = list(self.network.parameters())
            for replica in self.replicas[1:]:
                for p, q in zip(mine, replica.parameters(), strict=True):
                    q.copy_(p)
            buffers = [list(r.buffers()) for r in self.replicas]
            for i, b in enumerate(buffers[0]):
                if b.is_floating_point():
                    for other in buffers[1:]:
                        b.add_(other[i])
                    b.div_(len(buffers))
                for other in buffers[1:]:
                    other[i].copy_(b)

    # -- threads ----------------------------------------------------------------------------------

    @contextmanager
    def all_threads(self) -> Iterator[None]:
        """Give torch back its threads for a moment (a validation between steps)."""
        if self.workers == 1:
            yield
            return
        torch.set_num_threads(self._threads)
        try:
            yield
        finally:
            torch.set_num_threads(1)

    def close(self) -> None:
        """Stop the threads, give torch its threads back, store the weights in the default layout."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            torch.set_num_threads(self._threads)
        self.replicas = [self.network]
        if self.channels_last:
            self.network.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    def __enter__(self) -> StepRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
