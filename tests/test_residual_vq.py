"""ResidualVQ and GroupedResidualVQ: vector-quantize-pytorch's README examples and tests (import changed), and the
same outputs, codebook updates and state dicts as that package when it is installed."""

import random

import pytest
import torch

from patchvq import GroupedResidualVQ, ResidualVQ, upstream_state_dict

try:
    import vector_quantize_pytorch as lucidrains
except ImportError:
    lucidrains = None

needs_upstream = pytest.mark.skipif(lucidrains is None, reason="vector-quantize-pytorch (the bench extra) is not installed")


def test_readme_residual_vq():
    rvq = ResidualVQ(dim=256, num_quantizers=8, codebook_size=1024)
    x = torch.randn(1, 1024, 256)
    quantized, indices, commit_loss = rvq(x)
    assert quantized.shape == (1, 1024, 256) and indices.shape == (1, 1024, 8) and commit_loss.shape == (8,)
    quantized, indices, commit_loss, all_codes = rvq(x, return_all_codes=True)
    assert all_codes.shape == (8, 1, 1024, 256)
    rvq.eval()
    quantized, indices, _, all_codes = rvq(x, return_all_codes=True)
    torch.testing.assert_close(all_codes.sum(0), quantized, rtol=1e-5, atol=1e-5)


def test_readme_stochastic_shared_codebook():
    rvq = ResidualVQ(dim=64, num_quantizers=8, codebook_size=256, stochastic_sample_codes=True,
                     sample_codebook_temp=0.1, shared_codebook=True)
    quantized, indices, commit_loss = rvq(torch.randn(1, 512, 64))
    assert quantized.shape == (1, 512, 64) and indices.shape == (1, 512, 8) and commit_loss.shape == (8,)
    assert all(layer.codebook_module is rvq.layers[0].codebook_module for layer in rvq.layers)


def test_readme_grouped_and_kmeans():
    grvq = GroupedResidualVQ(dim=256, num_quantizers=8, groups=2, codebook_size=1024)
    quantized, indices, commit_loss = grvq(torch.randn(1, 1024, 256))
    assert quantized.shape == (1, 1024, 256) and indices.shape == (2, 1, 1024, 8) and commit_loss.shape == (2, 8)
    grvq.eval()
    x = torch.randn(1, 64, 256)
    quantized, indices, _ = grvq(x)
    torch.testing.assert_close(grvq.get_output_from_indices(indices), quantized, rtol=1e-5, atol=1e-5)
    rvq = ResidualVQ(dim=256, codebook_size=256, num_quantizers=4, kmeans_init=True, kmeans_iters=10)
    _, indices, commit_loss = rvq(torch.randn(1, 1024, 256))
    assert indices.shape == (1, 1024, 4) and commit_loss.shape == (4,)


@pytest.mark.parametrize("implicit, cosine", [(True, False), (False, True), (False, False)])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_output_from_indices(implicit, cosine, train, shared):
    rvq = ResidualVQ(dim=32, num_quantizers=8, codebook_size=128, implicit_neural_codebook=implicit,
                     use_cosine_sim=cosine, shared_codebook=shared)
    rvq.train(train)
    quantized, indices, _ = rvq(torch.randn(1, 256, 32), freeze_codebook=train and not implicit)
    torch.testing.assert_close(quantized, rvq.get_output_from_indices(indices), rtol=1e-5, atol=1e-5)


def test_codebook_sizes_per_quantizer():
    rvq = ResidualVQ(dim=2, codebook_size=(5, 128, 256))
    assert rvq.num_quantizers == 3 and [layer.codebook_size for layer in rvq.layers] == [5, 128, 256]
    quantized, indices, _ = rvq(torch.randn(2, 2, 2), freeze_codebook=True)
    torch.testing.assert_close(quantized, rvq.get_output_from_indices(indices), rtol=1e-5, atol=1e-5)


def test_quantize_dropout():
    rvq = ResidualVQ(dim=16, codebook_dim=8, num_quantizers=6, codebook_size=32, quantize_dropout=True,
                     quantize_dropout_cutoff_index=1)
    x = torch.randn(2, 30, 16, requires_grad=True)
    _, indices, losses = rvq(x, rand_quantize_dropout_fixed_seed=3)
    last = random.Random(3).randrange(1, 6)
    assert bool((indices[..., last + 1 :] == -1).all()) and bool((indices[..., : last + 1] >= 0).all())
    assert bool((losses[last + 1 :] == 0).all())
    rvq.eval()
    quantized, indices, _ = rvq(x)
    coarse = rvq.get_output_from_indices(indices[..., :2])
    assert coarse.shape == quantized.shape


def test_masked_positions_and_diveq():
    rvq = ResidualVQ(dim=8, num_quantizers=3, codebook_size=16)
    mask = torch.rand(2, 10) < 0.6
    quantized, indices, _ = rvq(torch.randn(2, 10, 8), mask=mask)
    assert bool((quantized[~mask] == 0).all()) and bool((indices[~mask] == -1).all())
    diveq = ResidualVQ(dim=8, num_quantizers=3, codebook_size=16, diveq=True)
    x = torch.randn(2, 10, 8, requires_grad=True)
    quantized, _, _ = diveq(x)
    quantized.sum().backward()
    assert diveq.layers[0].codebook.grad is not None


def test_beam_search_is_refused():
    with pytest.raises(ValueError, match="beam"):
        ResidualVQ(dim=8, num_quantizers=2, codebook_size=4, beam_size=2)


@needs_upstream
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("cosine", [False, True])
def test_training_and_state_dicts_match_vector_quantize_pytorch(shared, cosine):
    kwargs = dict(dim=8, num_quantizers=3, codebook_size=16, shared_codebook=shared, use_cosine_sim=cosine,
                  decay=0.6)
    torch.manual_seed(0)
    theirs = lucidrains.ResidualVQ(**kwargs)
    ours = ResidualVQ(**kwargs)
    ours.load_state_dict(theirs.state_dict())
    for step in range(3):
        x = torch.randn(2, 20, 8)
        q, indices, losses = ours(x)
        q_ref, indices_ref, losses_ref = theirs(x)
        assert torch.equal(indices, indices_ref)
        torch.testing.assert_close(q, q_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(losses, losses_ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours.codebooks, theirs.codebooks, rtol=1e-4, atol=1e-5)
    ours.eval()
    back = lucidrains.ResidualVQ(**kwargs)
    back.load_state_dict(upstream_state_dict(ours))
    back.eval()
    x = torch.randn(2, 20, 8)
    for got, want in zip(ours(x), back(x)):
        torch.testing.assert_close(got, want)


@needs_upstream
def test_implicit_neural_codebook_state_dict_from_vector_quantize_pytorch():
    kwargs = dict(dim=8, num_quantizers=3, codebook_size=16, implicit_neural_codebook=True)
    torch.manual_seed(0)
    theirs = lucidrains.ResidualVQ(**kwargs).eval()
    ours = ResidualVQ(**kwargs).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 20, 8)
    for got, want in zip(ours(x), theirs(x)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(), dict(rotation_trick=False), dict(shared_codebook=True, threshold_ema_dead_code=2),
                                    dict(codebook_dim=4), dict(quantize_dropout=True)],
                         ids=["rotation", "straight-through", "shared-revival", "projected", "dropout"])
def test_fused_training_path_equals_the_layer_loop(kwargs):
    """The fused path (indices kept, residuals recomputed in backward) gives the layer loop's indices, outputs,
    losses, input gradients and codebooks."""
    torch.manual_seed(0)
    fused = ResidualVQ(dim=8, num_quantizers=4, codebook_size=16, **kwargs)
    loop = ResidualVQ(dim=8, num_quantizers=4, codebook_size=16, **kwargs)
    loop.load_state_dict(fused.state_dict())
    loop._fusable = lambda: False
    assert fused._fusable()
    x, w = torch.randn(2, 3000, 8), torch.randn(2, 3000, 8)
    for step in range(2):
        results = []
        for model in (fused, loop):
            torch.manual_seed(step)
            xi = x.clone().requires_grad_()
            q, indices, losses = model(xi, rand_quantize_dropout_fixed_seed=step)
            ((q * w).sum() + (losses * torch.arange(1.0, 5.0)).sum()).backward()
            results.append((q, indices, losses, xi.grad))
        (q, indices, losses, grad), (q_ref, indices_ref, losses_ref, grad_ref) = results
        assert torch.equal(indices, indices_ref)
        torch.testing.assert_close(q, q_ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(losses, losses_ref)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fused.codebooks, loop.codebooks)
