"""Data-parallel steps: the sharded batch has exactly the whole batch's loss and gradient."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from napari_tomoseg.core.learn.losses import (
    loss_from_terms,
    loss_terms,
    masked_cross_entropy,
    phase_weights,
    soft_jaccard_loss,
)
from napari_tomoseg.core.learn.parallel import StepRunner, default_workers
from napari_tomoseg.core.model import ModularUNet, UNetConfig
from napari_tomoseg.core.model.network import fold_batch_norm, unfold_batch_norm


def _batch(n: int = 6, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    y = torch.randint(0, 4, (n, size, size), generator=g)  # 0 = not annotated
    y[0] = 0  # a crop without any annotation
    return x, y


def test_summed_terms_give_the_whole_batch_loss() -> None:
    _, y = _batch()
    logits = torch.randn(6, 3, 32, 32)
    w = phase_weights([5, 100, 30])
    whole = soft_jaccard_loss(logits, y) + masked_cross_entropy(logits, y, weight=w)
    parts = sum(loss_terms(logits[i : i + 2], y[i : i + 2], weight=w) for i in (0, 2, 4))
    assert loss_from_terms(parts).item() == pytest.approx(whole.item(), rel=1e-6)


@pytest.mark.parametrize("workers", [2, 3])
def test_sharded_step_has_the_gradient_of_the_whole_batch(workers: int) -> None:
    torch.manual_seed(0)
    net = ModularUNet(
        UNetConfig(base_filters=2, depth=2)
    ).eval()  # eval: norms use fixed statistics
    x, y = _batch()
    w = phase_weights([5, 100, 30])
    ref = copy.deepcopy(net)
    one = StepRunner(ref, device=torch.device("cpu"), dtype=torch.float32, weight=w)
    loss_one = one.forward_backward(x, y)
    one.close()
    threads = torch.get_num_threads()
    many = StepRunner(
        net, device=torch.device("cpu"), dtype=torch.float32, workers=workers, weight=w
    )
    loss_many = many.forward_backward(x, y)
    many.close()
    assert torch.get_num_threads() == threads  # given back
    assert loss_many == pytest.approx(loss_one, rel=1e-5)
    for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_replicas_follow_the_network_after_a_step() -> None:
    net = ModularUNet(UNetConfig(base_filters=2, depth=2)).train()
    runner = StepRunner(net, device=torch.device("cpu"), dtype=torch.float32, workers=2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = _batch()
    runner.forward_backward(x, y)
    opt.step()
    runner.sync()
    for a, b in zip(
        net.state_dict().values(), runner.replicas[1].state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    runner.close()


def test_default_workers_one_per_thread_at_most_one_per_crop() -> None:
    assert default_workers(torch.device("cpu"), 1) == 1
    assert default_workers(torch.device("cpu"), 64) == torch.get_num_threads()
    assert default_workers(torch.device("cuda"), 8) == 1


def test_folded_norms_compute_the_same_and_unfold_to_the_same_architecture() -> None:
    torch.manual_seed(1)
    net = ModularUNet(UNetConfig(base_filters=4))
    # Non-trivial statistics and affine parameters in every norm.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    net.eval()
    x = torch.rand(2, 1, 32, 32)
    folded = fold_batch_norm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
        restored = unfold_batch_norm(folded).eval()
        torch.testing.assert_close(restored(x), expected, rtol=1e-4, atol=1e-5)
    assert list(restored.state_dict()) == list(net.state_dict())
    assert np.isclose(
        sum(1 for m in restored.modules() if isinstance(m, torch.nn.BatchNorm2d)),
        sum(1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)),
    )
