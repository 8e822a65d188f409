"""PatchVQ: equals the plain composition, routes, overrides, trains its codebook, compiles, drops in."""

import copy

import pytest
import torch
import torch.nn.functional as F

import patchvq
from patchvq.layers import routing
from patchvq.layers.patch_vq import PatchVQ, PatchVQConfig


def make_layer(dim=8, levels=(8, 16, 32), **settings):
    torch.manual_seed(0)
    settings.setdefault("num_codes", 16)
    return PatchVQ(dim, levels, **settings)


def plain_composition(levels, level_map, codebook, metric="l2"):
    """Quantise every level in full with nearest_code, select with the level map, upsample."""
    factors = [levels[0].shape[2] // lv.shape[2] for lv in levels]
    z_q = None
    for level, (lv, f) in enumerate(zip(levels, factors)):
        batch, dim, h, w = lv.shape
        index, _ = patchvq.nearest_code(lv.permute(0, 2, 3, 1).reshape(-1, dim), codebook, metric)
        codes = codebook[index].reshape(batch, h, w, dim).permute(0, 3, 1, 2)
        up = F.interpolate(codes, scale_factor=f, mode="nearest")
        hit = F.interpolate((level_map == level)[:, None].float(), scale_factor=factors[-1], mode="nearest") > 0
        z_q = up if z_q is None else torch.where(hit, up, z_q)
    return z_q


@pytest.mark.parametrize("levels", [(8,), (8, 16), (8, 16, 32), (4, 16)])
@pytest.mark.parametrize("training", [False, True])
def test_output_equals_plain_composition(levels, training):
    layer = make_layer(levels=levels).double().train(training)
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    layer(x)  # in training the first call initialises the codebook; every call then moves it by EMA
    codebook = layer.codebook.weight.clone()
    out = layer(x)
    with torch.no_grad():
        want = plain_composition(layer.levels_of(x), out.level_map, codebook)
    assert torch.equal(out.z_q.detach(), want)
    coarse = 16 // (levels[-1] // levels[0])
    assert out.z_q.shape == x.shape and out.level_map.shape == (2, coarse, coarse)
    for level, index in enumerate(out.indices):
        chosen = (out.level_map == level).repeat_interleave(index.shape[1] // out.level_map.shape[1], 1)
        chosen = chosen.repeat_interleave(index.shape[2] // out.level_map.shape[2], 2)
        assert torch.equal(index >= 0, chosen)


def test_gradients_equal_the_reference(monkeypatch):
    base = make_layer().double().train()
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    weight = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    grads = {}
    for name in ("native", "reference"):
        monkeypatch.setenv("PATCHVQ_BACKEND", name)
        layer = copy.deepcopy(base)
        inputs = x.clone().requires_grad_()
        torch.manual_seed(5)
        out = layer(inputs)
        ((out.z_q * weight).sum() + out.loss.total).backward()
        grads[name] = [inputs.grad] + [p.grad for p in layer.parameters()]
    for got, want in zip(grads["native"], grads["reference"]):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    assert grads["native"][0].abs().sum() > 0


def test_router_gets_gradient_through_gate_and_budget():
    layer = make_layer().train()
    out = layer(torch.randn(2, 8, 16, 16))
    (grad_z,) = torch.autograd.grad(out.z_q.sum(), layer.router.mlp[0].weight, retain_graph=True)
    (grad_b,) = torch.autograd.grad(out.loss.budget, layer.router.mlp[0].weight)
    assert grad_z.abs().sum() > 0 and grad_b.abs().sum() > 0


def test_level_map_override():
    layer = make_layer().train()
    level_map = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])
    out = layer(torch.randn(2, 8, 8, 8), level_map=level_map)
    assert torch.equal(out.level_map, level_map)
    assert out.usage["level_share"].tolist() == pytest.approx([2 / 8, 3 / 8, 3 / 8])
    assert out.usage["spent_fraction"].item() == pytest.approx((16 * 2 + 4 * 3 + 3) / 16 / 8)
    layer.eval()
    assert torch.equal(layer(torch.randn(2, 8, 8, 8), level_map=level_map).level_map, level_map)
    with pytest.raises(ValueError, match="level_map"):
        layer(torch.randn(2, 8, 16, 16), level_map=level_map)


def test_list_input_and_projection():
    layer = make_layer(dim=6, code_dim=4).eval()
    levels = [torch.randn(3, 6, 32 // f, 32 // f) for f in (1, 2, 4)]
    out = layer(levels)
    assert out.z_q.shape == (3, 6, 32, 32) and out.level_map.shape == (3, 8, 8)
    assert layer.codebook.weight.shape == (16, 4)
    with pytest.raises(ValueError, match="list of 3"):
        layer(levels[:2])
    with pytest.raises(ValueError, match="divided by 2"):
        layer([levels[0], levels[2], levels[2]])
    with pytest.raises(ValueError, match=r"\[B, 6, H, W\]"):
        layer(torch.randn(3, 5, 32, 32))
    with pytest.raises(ValueError, match="coarsest factor"):
        layer(torch.randn(3, 6, 30, 30))


def test_commitment_is_weighted_by_covered_share():
    layer = make_layer(levels=(1, 2, 4), commitment_weight=0.25).train()
    out = layer(torch.randn(2, 8, 16, 16))
    # The distance map holds each fine cell's covering vector's squared error: its mean is the
    # share-weighted sum over chosen vectors.
    want = 0.25 * out.distance.mean() / 8
    torch.testing.assert_close(out.loss.commitment, want.float(), rtol=1e-5, atol=1e-7)


def test_codebook_initialises_and_moves_only_in_training():
    layer = make_layer().train()
    assert not bool(layer.codebook.initialised)
    layer(torch.randn(2, 8, 16, 16))
    assert bool(layer.codebook.initialised)
    before = layer.codebook.weight.clone()
    layer(torch.randn(2, 8, 16, 16))
    assert not torch.equal(before, layer.codebook.weight)
    layer.eval()
    before = layer.codebook.weight.clone()
    layer(torch.randn(2, 8, 16, 16))
    assert torch.equal(before, layer.codebook.weight)
    assert set(layer.usage()) == {"perplexity", "live_fraction", "revived"}


def test_schedules_follow_progress():
    layer = make_layer()
    assert layer.temperature().item() == pytest.approx(1.0) and layer.budget_target().item() == pytest.approx(1.0)
    layer.set_progress(1.0)
    assert layer.temperature().item() == pytest.approx(0.3) and layer.budget_target().item() == pytest.approx(0.4)
    with pytest.raises(ValueError, match="progress"):
        layer.set_progress(1.5)


def test_hard_gumbel_gate_is_exact_and_samples_the_softmax():
    torch.manual_seed(0)
    logits = torch.tensor([0.5, -1.0, 1.5]).reshape(1, 3, 1, 1).expand(4000, 3, 1, 1).contiguous()
    logits.requires_grad_()
    gate, choice = routing.hard_gumbel_gate(logits, 1.0)
    assert set(gate.detach().unique().tolist()) <= {0.0, 1.0} and bool((gate.detach().sum(1) == 1).all())
    frequency = torch.bincount(choice.flatten(), minlength=3).float() / choice.numel()
    torch.testing.assert_close(frequency, logits[0, :, 0, 0].detach().softmax(0), atol=0.03, rtol=0)
    (grad,) = torch.autograd.grad((gate[:, 0] * 1.0).sum(), logits)
    assert grad.abs().sum() > 0


def test_bad_construction():
    with pytest.raises(ValueError, match="power-of-two"):
        PatchVQ(8, (8, 12))
    with pytest.raises(ValueError, match="non-empty"):
        PatchVQ(8, ())
    with pytest.raises(TypeError):
        PatchVQ(8, (8, 16), no_such_setting=1)
    assert PatchVQ(8, (8, 16), config=PatchVQConfig(num_codes=32), decay=0.9).config.decay == 0.9


def test_compiled_forward_matches_eager():
    layer = make_layer().eval()
    x = torch.randn(2, 8, 16, 16)
    eager = layer(x)
    compiled = torch.compile(layer, fullgraph=True)(x)
    assert torch.equal(compiled.z_q, eager.z_q) and torch.equal(compiled.level_map, eager.level_map)
    assert all(torch.equal(a, b) for a, b in zip(compiled.indices, eager.indices))


@pytest.mark.slow
def test_compiled_training_step_runs():
    layer = make_layer().train()
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    layer(x)  # the k-means init runs eagerly on the first training call
    out = torch.compile(layer, fullgraph=True)(x)
    (out.z_q.square().mean() + out.loss.total).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


class TinyAutoencoder(torch.nn.Module):
    """The drop-in example of docs/patch_vq.md: the quantiser is the only line that changes."""

    def __init__(self, quantizer):
        super().__init__()
        self.encoder = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 4, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 4, 2, 1)
        )
        self.quantizer = quantizer
        self.decoder = torch.nn.Sequential(
            torch.nn.ConvTranspose2d(16, 16, 4, 2, 1), torch.nn.ReLU(), torch.nn.ConvTranspose2d(16, 3, 4, 2, 1)
        )

    def forward(self, images):
        quantized, _, vq_loss = self.quantizer(self.encoder(images))
        return self.decoder(quantized), vq_loss


def test_drop_in_replacement_trains():
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    before = TinyAutoencoder(patchvq.VectorQuantize(16, 32, accept_image_fmap=True, kmeans_init=True))
    after = TinyAutoencoder(PatchVQ(16, levels=(4, 8), num_codes=32))
    recon_before, _ = before(images)
    recon_after, _ = after(images)
    assert recon_after.shape == recon_before.shape == images.shape
    optimiser = torch.optim.Adam(after.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        after.quantizer.set_progress(step / 30)
        recon, vq_loss = after(images)
        loss = F.mse_loss(recon, images) + vq_loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(F.mse_loss(recon, images).item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


def test_cosine_metric_quantises_unit_vectors():
    layer = make_layer(metric="cosine")
    x = torch.randn(2, 8, 16, 16)
    layer(x)  # k-means initialisation of the codebook
    out = layer.eval()(x)
    norms = out.z_q.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    with torch.no_grad():
        unit = [F.normalize(lv, dim=1) for lv in layer.levels_of(x)]
        want = plain_composition(unit, out.level_map, layer.codebook.weight, "cosine")
    assert torch.equal(out.z_q, want)
