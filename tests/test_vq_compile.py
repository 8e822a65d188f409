"""VectorQuantize under torch.compile(fullgraph=True): no graph break, no host sync, same results as eager."""

import copy

import torch

from patchvq.layers import VectorQuantize


def _step(layer, x, mask):
    x = x.clone().requires_grad_()
    q, index, loss = layer(x, mask=mask)
    (q.square().sum() + loss).backward()
    return q.detach(), index, loss.detach(), x.grad


def test_training_and_eval_compile_fullgraph_and_match_eager():
    """fullgraph=True fails on any graph break, and so on any .item() or host sync in the forward."""
    torch.manual_seed(0)
    eager = VectorQuantize(dim=8, codebook_size=32, kmeans_init=True, threshold_ema_dead_code=0.0, decay=0.9)
    eager(torch.randn(4, 64, 8))  # the k-means init runs eagerly on the first training step
    compiled_layer = copy.deepcopy(eager)
    compiled = torch.compile(compiled_layer, fullgraph=True)
    for step in range(2):
        x = torch.randn(4, 64, 8)
        mask = torch.rand(4, 64) < 0.8
        for got, want in zip(_step(compiled, x, mask), _step(eager, x, mask)):
            torch.testing.assert_close(got, want)
        torch.testing.assert_close(compiled_layer.codebook, eager.codebook)
    compiled_layer.eval(), eager.eval()
    x = torch.randn(3, 16, 8)
    for got, want in zip(compiled(x), eager(x)):
        torch.testing.assert_close(got, want)


def test_revival_compiles_fullgraph():
    torch.manual_seed(0)
    layer = VectorQuantize(dim=8, codebook_size=64, threshold_ema_dead_code=2.0, rotation_trick=True)
    compiled = torch.compile(layer, fullgraph=True)
    for _ in range(3):
        _step(compiled, torch.randn(2, 50, 8), torch.rand(2, 50) < 0.9)
    assert layer.usage()["revived"] > 0
    assert bool(torch.isfinite(layer.codebook).all())
