"""The layers on the test device (PATCHVQ_TEST_DEVICE; CUDA in benchmarks/gpu_check.sh): training
keeps every parameter, buffer and output on the device, and the trained layer, evaluated, gives
what the same layer moved to the CPU gives."""

import copy

import pytest
import torch

from patchvq.layers import VectorQuantize
from patchvq.layers.patch_vq import PatchVQ


def assert_on(module: torch.nn.Module, device: torch.device) -> None:
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        assert tensor.device.type == device.type, f"{name} is on {tensor.device}"


@pytest.mark.parametrize("cosine", [False, True])
def test_vector_quantize_trains_on_the_device_and_agrees_with_cpu(device, cosine):
    torch.manual_seed(0)
    layer = VectorQuantize(dim=16, codebook_size=48, kmeans_init=True, threshold_ema_dead_code=2,
                           use_cosine_sim=cosine, accept_image_fmap=True).to(device).train()
    opt_input = torch.randn(4, 16, 12, 12, device=device, requires_grad=True)
    for _ in range(3):  # k-means init, then EMA steps with dead codes revived
        quantized, indices, loss = layer(opt_input)
        (quantized.square().mean() + loss).backward()
    assert quantized.device.type == indices.device.type == device.type
    assert opt_input.grad is not None and bool(torch.isfinite(opt_input.grad).all())
    assert_on(layer, device)
    assert 0 < layer.usage()["live_fraction"] <= 1

    layer.eval()
    x = torch.randn(4, 16, 12, 12, device=device)
    with torch.no_grad():
        quantized, indices, _ = layer(x)
        on_cpu = copy.deepcopy(layer).cpu()
        want_quantized, want_indices, _ = on_cpu(x.cpu())
    # Float32 searches on two devices may break near-ties differently; all but a few rows agree.
    assert float((indices.cpu() == want_indices).float().mean()) > 0.99
    same = (indices.cpu() == want_indices)[:, None].expand_as(want_quantized)
    torch.testing.assert_close(quantized.cpu()[same], want_quantized[same])


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_patch_vq_trains_on_the_device_and_agrees_with_cpu(device, metric):
    torch.manual_seed(0)
    layer = PatchVQ(8, (8, 16, 32), num_codes=16, metric=metric).to(device).train()
    x = torch.randn(2, 8, 16, 16, device=device, requires_grad=True)
    for _ in range(2):
        out = layer(x)
        (out.z_q.square().mean() + out.loss.total).backward()
    assert out.z_q.device.type == out.level_map.device.type == device.type
    assert all(index.device.type == device.type for index in out.indices)
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert_on(layer, device)

    layer.eval()
    with torch.no_grad():
        out = layer(x)
        want = copy.deepcopy(layer).cpu()(x.detach().cpu(), level_map=out.level_map.cpu())
    # The router's scores agree; its hard choice is handed over so that both quantise the same patches.
    torch.testing.assert_close(out.logits.cpu(), want.logits, rtol=1e-4, atol=1e-5)
    for got, expected in zip(out.indices, want.indices):
        assert float((got.cpu() == expected).float().mean()) > 0.99
    close = torch.isclose(out.z_q.cpu(), want.z_q, rtol=1e-5, atol=1e-6)
    assert float(close.float().mean()) > 0.99
