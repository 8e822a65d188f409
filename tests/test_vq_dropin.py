"""VectorQuantize as a drop-in for vector_quantize_pytorch.VectorQuantize: its README examples, its options and
forward keywords, and (when the bench extra is installed) the same outputs, losses, codebook updates and state
dicts as that package."""

import pytest
import torch
import torch.nn.functional as F

from patchvq import VectorQuantize, upstream_state_dict
from patchvq.layers import code_softmax

try:
    import vector_quantize_pytorch as lucidrains
except ImportError:
    lucidrains = None

needs_upstream = pytest.mark.skipif(lucidrains is None, reason="vector-quantize-pytorch (the bench extra) is not installed")


# --- vector-quantize-pytorch's README examples, with the import changed ------------------------------------------


@pytest.mark.parametrize(
    "kwargs, shape, index_shape",
    [
        (dict(dim=256, codebook_size=512, decay=0.8, commitment_weight=1.0), (1, 1024, 256), (1, 1024)),
        (dict(dim=256, codebook_size=256, codebook_dim=16), (1, 1024, 256), (1, 1024)),
        (dict(dim=256, codebook_size=256, use_cosine_sim=True), (1, 1024, 256), (1, 1024)),
        (dict(dim=256, codebook_size=512, threshold_ema_dead_code=2), (1, 1024, 256), (1, 1024)),
        (dict(dim=256, codebook_size=256, accept_image_fmap=True, orthogonal_reg_weight=10,
              orthogonal_reg_max_codes=128, orthogonal_reg_active_codes_only=False), (1, 256, 32, 32), (1, 32, 32)),
        (dict(dim=256, codebook_dim=32, heads=8, separate_codebook_per_head=True, codebook_size=8196,
              accept_image_fmap=True), (1, 256, 32, 32), (1, 32, 32, 8)),
        (dict(dim=256, codebook_size=256, rotation_trick=True), (1, 1024, 256), (1, 1024)),
        (dict(dim=256, codebook_size=256, directional_reparam=True, directional_reparam_variance=5e-3,
              threshold_ema_dead_code=2), (1, 1024, 256), (1, 1024)),
    ],
)
def test_readme_examples(kwargs, shape, index_shape):
    torch.manual_seed(0)
    vq = VectorQuantize(**kwargs)
    x = torch.randn(*shape, requires_grad=True)
    quantized, indices, loss = vq(x)
    assert quantized.shape == x.shape and tuple(indices.shape) == index_shape and loss.dim() == 0
    (quantized.sum() + loss).backward()
    assert x.grad is not None
    vq.eval()
    quantized, indices, _ = vq(x)
    torch.testing.assert_close(quantized, vq.get_output_from_indices(indices))


def test_mask_by_lens_with_frozen_ema():
    """decay=1.0 freezes the EMA, so a padded batch and its unpadded prefix see the same codebook."""
    vq = VectorQuantize(dim=32, codebook_size=64, decay=1.0)
    x = torch.randn(1, 100, 32)
    before = vq.codebook.clone()
    q, index, loss = vq(x[:, :50])
    q_m, index_m, loss_m = vq(x, lens=torch.full((1,), 50))
    torch.testing.assert_close(loss, loss_m)
    torch.testing.assert_close(q, q_m[:, :50])
    assert torch.equal(index, index_m[:, :50])
    assert bool((q_m[:, 50:] == 0).all()) and bool((index_m[:, 50:] == -1).all())
    torch.testing.assert_close(vq.codebook, before)


def test_rotation_trick_is_the_default():
    assert VectorQuantize(dim=4, codebook_size=8).rotation_trick
    assert not VectorQuantize(dim=1, codebook_size=8).rotation_trick
    assert not VectorQuantize(dim=4, codebook_size=8, directional_reparam=True, threshold_ema_dead_code=1).rotation_trick


def test_accept_3d_fmap_and_heads():
    vq = VectorQuantize(dim=12, codebook_size=16, codebook_dim=4, heads=3, accept_3d_fmap=True)
    x = torch.randn(2, 12, 3, 4, 5, requires_grad=True)
    q, index, loss = vq(x)
    assert q.shape == x.shape and index.shape == (2, 3, 4, 5, 3)
    (q.sum() + loss).backward()
    vq.eval()
    q, index, _ = vq(x)
    torch.testing.assert_close(q, vq.get_output_from_indices(index))


@pytest.mark.parametrize("separate", [False, True])
def test_multi_head_codes_are_per_head_nearest(separate):
    torch.manual_seed(1)
    vq = VectorQuantize(dim=6, codebook_size=10, codebook_dim=3, heads=2, separate_codebook_per_head=separate,
                        rotation_trick=False).eval()
    x = torch.randn(2, 7, 6)
    q, index, _ = vq(x)
    rows = vq.project_in(x).reshape(2, 7, 2, 3)
    books = vq.codebook if separate else vq.codebook[None].expand(2, -1, -1)
    for head in range(2):
        want = torch.cdist(rows[:, :, head].reshape(-1, 3), books[head]).argmin(-1)
        assert torch.equal(index[..., head].reshape(-1), want)


def test_forward_keywords():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=8, codebook_size=16, decay=0.5)
    x = torch.randn(2, 10, 8)
    before = vq.codebook.clone()
    vq(x, ema_update=False)
    torch.testing.assert_close(vq.codebook, before)
    vq(x, freeze_codebook=True)
    torch.testing.assert_close(vq.codebook, before)
    vq(x, ema_update_weight=torch.zeros(16))
    torch.testing.assert_close(vq.codebook, before)
    vq(x, ema_update_weight=lambda total, count: torch.zeros_like(count))
    torch.testing.assert_close(vq.codebook, before)
    q, index, loss, parts = vq(x, return_loss_breakdown=True)
    assert set(parts._fields) == {"commitment", "codebook_diversity", "orthogonal_reg", "inplace_optimize"}
    torch.testing.assert_close(loss, parts.commitment)


def test_accumulated_ema_update_equals_one_update_on_the_whole_batch():
    torch.manual_seed(0)
    a = VectorQuantize(dim=8, codebook_size=16, decay=0.7)
    b = VectorQuantize(dim=8, codebook_size=16, decay=0.7)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 30, 8)
    before = b.codebook.clone()
    with torch.no_grad():
        a(x)
        b(x[:1], accum_ema_update=True)
        torch.testing.assert_close(b.codebook, before)  # nothing moves until the update that folds it in
        b_codes_before = b.codebook.clone()
        b(x[1:])
    assert not torch.equal(b_codes_before, b.codebook)
    torch.testing.assert_close(b.codebook_module.ema_count, a.codebook_module.ema_count)
    torch.testing.assert_close(b.codebook_module.ema_sum, a.codebook_module.ema_sum)
    torch.testing.assert_close(b.codebook, a.codebook)


def test_manual_ema_update_and_update_indices():
    torch.manual_seed(0)
    a = VectorQuantize(dim=8, codebook_size=16)
    b = VectorQuantize(dim=8, codebook_size=16)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 40, 8)
    mask = torch.rand(1, 40) < 0.6
    q_a, index_a, _ = a(x, mask=mask)
    q_b, index_b, _ = b(x, mask=mask, ema_update=False)
    torch.testing.assert_close(q_a, q_b)
    assert torch.equal(index_a, index_b)
    b.update_ema_indices(x, index_b, mask=mask)
    torch.testing.assert_close(a._codebook.cluster_size, b._codebook.cluster_size)
    torch.testing.assert_close(a._codebook.embed_avg, b._codebook.embed_avg)
    torch.testing.assert_close(a.codebook, b.codebook)
    c = VectorQuantize(dim=8, codebook_size=16, manual_ema_update=True)
    c.load_state_dict(a.state_dict())
    before = c.codebook.clone()
    c(x)
    torch.testing.assert_close(c.codebook, before)
    c.update_ema()
    assert not torch.equal(c.codebook, before)


def test_topk_codes():
    torch.manual_seed(0)
    a = VectorQuantize(dim=16, codebook_size=32)
    b = VectorQuantize(dim=16, codebook_size=32)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 50, 16)
    mask = torch.rand(1, 50) < 0.7
    q1, i1, loss1 = a(x, mask=mask)
    q2, i2, losses = b(x, mask=mask, topk=1, ema_update=False)
    assert q2.shape == (1, 50, 1, 16) and i2.shape == (1, 50, 1) and losses.shape == (1, 50, 1)
    assert torch.equal(i1, i2[..., 0])
    torch.testing.assert_close(q1, q2[..., 0, :])
    torch.testing.assert_close(loss1, losses.sum() / mask.sum() / 1)
    b.eval()
    _, i3, d3 = b(x, topk=4)
    rows = x.reshape(-1, 16)
    want = torch.cdist(rows, b.codebook).topk(4, largest=False).indices
    assert torch.equal(i3.reshape(-1, 4), want)
    assert bool((d3[..., 1:] >= d3[..., :1] - 1e-6).all())


def test_cross_entropy_commitment_and_diversity_equal_the_full_softmax():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=6, codebook_size=12, commitment_use_cross_entropy_loss=True,
                        codebook_diversity_loss_weight=0.5, codebook_diversity_temperature=3.0)
    x = torch.randn(3, 9, 6, requires_grad=True)
    codes = vq.codebook.clone()
    _, index, loss, parts = vq(x, return_loss_breakdown=True, freeze_codebook=True)
    logits = -torch.cdist(x, codes[None].expand(3, -1, -1))
    ce = F.cross_entropy(logits.reshape(-1, 12), index.reshape(-1))
    prob = (logits * 3.0).softmax(-1).mean(0)
    diversity = (prob * prob.clamp_min(1e-5).log()).sum(-1).mean()
    torch.testing.assert_close(parts.commitment, ce)
    torch.testing.assert_close(parts.codebook_diversity, diversity)
    torch.testing.assert_close(loss, ce + 0.5 * diversity)
    (g,) = torch.autograd.grad(loss, x)
    (want,) = torch.autograd.grad(ce + 0.5 * diversity, x)
    torch.testing.assert_close(g, want)


def test_orthogonal_loss_of_a_zero_codebook():
    vq = VectorQuantize(dim=2, codebook_size=4, learnable_codebook=True, ema_update=False, commitment_weight=0,
                        orthogonal_reg_weight=1, rotation_trick=False)
    with torch.no_grad():
        vq.codebook.zero_()
    _, _, loss = vq(torch.zeros(2, 3, 2))
    torch.testing.assert_close(loss, torch.tensor(1 / 4))


def test_learnable_codebook_with_in_place_optimizer_moves_codes():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=4, codebook_size=8, learnable_codebook=True, ema_update=False,
                        in_place_codebook_optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    before = vq.codebook.detach().clone()
    _, _, _, parts = vq(torch.randn(2, 20, 4), return_loss_breakdown=True)
    assert float(parts.inplace_optimize) > 0
    assert not torch.equal(vq.codebook.detach(), before)


def test_affine_parameters_and_layernorm_train_and_reload():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=8, codebook_size=16, codebook_dim=4, affine_param=True, layernorm_after_project_in=True)
    for _ in range(3):
        vq(torch.randn(2, 10, 8))
    copy = VectorQuantize(dim=8, codebook_size=16, codebook_dim=4, affine_param=True, layernorm_after_project_in=True)
    copy.load_state_dict(vq.state_dict())
    vq.eval(), copy.eval()
    x = torch.randn(2, 10, 8)
    for got, want in zip(copy(x), vq(x)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("heads, codebook_dim, separate", [(1, 3, False), (2, 3, False), (2, 3, True)])
@pytest.mark.parametrize("channel_last", [False, True])
def test_masked_commitment_is_in_codebook_space(heads, codebook_dim, separate, channel_last):
    """With a mask, the loss is the commitment of the real positions, in the projected (per-head) code space:
    the same loss, indices and outputs as the real positions packed without a mask."""
    torch.manual_seed(0)
    vq = VectorQuantize(dim=6, codebook_dim=codebook_dim, codebook_size=8, heads=heads,
                        separate_codebook_per_head=separate, channel_last=channel_last, rotation_trick=False,
                        commitment_weight=0.7)
    x = (3 * torch.randn(2, 4, 6)).requires_grad_()
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 3] = False
    mask[1, 2:] = False
    packed = x[mask][None]
    layout = (lambda t: t) if channel_last else (lambda t: t.transpose(1, 2))
    q, index, loss = vq(layout(x), mask=mask, freeze_codebook=True)
    q_p, index_p, loss_p = vq(layout(packed), freeze_codebook=True)
    torch.testing.assert_close(loss, loss_p)
    assert torch.equal(index[mask], index_p[0])
    torch.testing.assert_close(layout(q)[mask], layout(q_p)[0])
    assert bool((layout(q)[~mask] == 0).all()) and bool((index[~mask] == -1).all())
    (g,) = torch.autograd.grad(loss, x)
    assert bool((g[~mask] == 0).all())


# --- stochastic code sampling ---------------------------------------------------------------------------------


def test_stochastic_codes_follow_the_softmax_of_minus_distance_over_temperature():
    """Chi-square test at a fixed seed: codes sampled for one row, many times, against softmax(-d / T)."""
    torch.manual_seed(0)
    codes = torch.randn(8, 4)
    row = torch.randn(1, 4)
    temperature = 0.7
    draws = 40_000
    generator = torch.Generator().manual_seed(1234)
    index = code_softmax.sample_codes(row.expand(draws, -1), codes, "l2", temperature, stochastic=True,
                                      generator=generator)
    observed = torch.bincount(index, minlength=8).double()
    expected = (-torch.cdist(row, codes)[0].double() / temperature).softmax(-1) * draws
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 24.3, f"chi-square {chi2:.1f} over 7 degrees of freedom (p < 0.001 above 24.3)"
    vq = VectorQuantize(dim=4, codebook_size=8, stochastic_sample_codes=True, sample_codebook_temp=temperature,
                        decay=1.0)
    vq.codebook = codes
    index_layer = vq(row.expand(2000, -1)[None])[1]
    assert index_layer.unique().numel() > 1, "training with stochastic_sample_codes samples"
    vq.eval()
    assert vq(row.expand(10, -1)[None])[1].unique().numel() == 1, "eval takes the nearest code"


def _peak_bytes(fn) -> int:
    """Peak of live CPU tensor memory allocated during fn() (the profiler's allocation events in time order)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def test_stochastic_sampling_and_softmax_losses_hold_no_n_by_k_buffer():
    """A training step with stochastic codes, cross-entropy commitment and the diversity loss peaks well below
    one N x K float32 matrix (vector-quantize-pytorch holds several), a few MiB above the plain step."""
    n, k, d = 16384, 1024, 16
    x = torch.randn(1, n, d)

    def step(**kwargs):
        torch.manual_seed(0)
        vq = VectorQuantize(dim=d, codebook_size=k, **kwargs)
        xi = x.clone().requires_grad_()

        def run():
            q, _, loss = vq(xi)
            (q.sum() + loss).backward()

        return _peak_bytes(run)

    plain = step()
    softmax = step(stochastic_sample_codes=True, sample_codebook_temp=0.5, commitment_use_cross_entropy_loss=True,
                   codebook_diversity_loss_weight=0.1)
    n_by_k = n * k * 4
    assert softmax - plain < n_by_k / 4, f"{softmax - plain} extra bytes; one N x K matrix is {n_by_k}"


# --- against vector-quantize-pytorch --------------------------------------------------------------------------

CONFIGS = [
    dict(dim=8, codebook_size=32),
    dict(dim=8, codebook_size=32, heads=2, codebook_dim=4),
    dict(dim=8, codebook_size=32, heads=2, codebook_dim=3, separate_codebook_per_head=True),
    dict(dim=8, codebook_size=32, codebook_dim=4, layernorm_after_project_in=True, use_cosine_sim=True),
    dict(dim=8, codebook_size=32, affine_param=True),
    dict(dim=8, codebook_size=32, kmeans_init=True, threshold_ema_dead_code=1),
]


@needs_upstream
@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_state_dicts_interchange_with_vector_quantize_pytorch(kwargs):
    torch.manual_seed(0)
    theirs = lucidrains.VectorQuantize(**kwargs)
    for _ in range(2):
        theirs(torch.randn(2, 20, 8))
    ours = VectorQuantize(**kwargs)
    ours.load_state_dict(theirs.state_dict())
    theirs.eval(), ours.eval()
    x = torch.randn(2, 20, 8)
    for got, want in zip(ours(x), theirs(x)):
        torch.testing.assert_close(got, want)
    ours.train()
    ours(torch.randn(2, 20, 8))
    ours.eval()
    back = lucidrains.VectorQuantize(**kwargs)
    if kwargs.get("affine_param"):
        back(torch.randn(2, 20, 8))  # its batch statistics exist only after a forward
    back.load_state_dict(upstream_state_dict(ours))
    back.eval()
    for got, want in zip(ours(x), back(x)):
        torch.testing.assert_close(got, want)


@needs_upstream
@pytest.mark.parametrize("kwargs", CONFIGS[:3] + [dict(dim=8, codebook_size=32, affine_param=True, decay=0.5)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("masked", [False, True])
def test_training_steps_match_vector_quantize_pytorch(kwargs, masked):
    if masked and kwargs.get("heads", 1) > 1:
        pytest.skip("vector-quantize-pytorch 1.32 fails on a mask with heads (its masked commitment loss compares "
                    "with the unprojected input); test_masked_commitment_is_in_codebook_space covers ours")
    torch.manual_seed(0)
    theirs = lucidrains.VectorQuantize(**kwargs)
    ours = VectorQuantize(**kwargs)
    ours.load_state_dict(theirs.state_dict())
    for step in range(3):
        x = torch.randn(2, 20, 8) * (1 + step)
        mask = torch.rand(2, 20) < 0.7 if masked else None
        q, index, loss = ours(x, mask=mask)
        q_ref, index_ref, loss_ref = theirs(x, mask=mask)
        assert torch.equal(index, index_ref)
        torch.testing.assert_close(q, q_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(loss, loss_ref, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours._codebook.embed, theirs._codebook.embed, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours._codebook.cluster_size, theirs._codebook.cluster_size)


@needs_upstream
def test_ema_weights_and_accumulation_match_vector_quantize_pytorch():
    torch.manual_seed(0)
    theirs = lucidrains.VectorQuantize(dim=8, codebook_size=16, decay=0.6)
    ours = VectorQuantize(dim=8, codebook_size=16, decay=0.6)
    ours.load_state_dict(theirs.state_dict())
    weight = torch.rand(16)
    calls = [dict(ema_update_weight=weight), dict(accum_ema_update=True), dict(),
             dict(ema_update_weight=lambda s, c: (c > 0.5).float())]
    for kwargs in calls:
        x = torch.randn(2, 20, 8)
        assert torch.equal(ours(x, **kwargs)[1], theirs(x, **kwargs)[1])
        torch.testing.assert_close(ours._codebook.cluster_size, theirs._codebook.cluster_size)
        torch.testing.assert_close(ours._codebook.embed_avg, theirs._codebook.embed_avg)
        torch.testing.assert_close(ours.codebook, theirs.codebook)


@needs_upstream
@pytest.mark.parametrize("cosine,options", [
    (False, {"commitment_use_cross_entropy_loss": True}), (True, {"commitment_use_cross_entropy_loss": True}),
    (False, {"heads": 2, "codebook_dim": 4}), (True, {"heads": 2, "codebook_dim": 4}),
    (False, {"heads": 2, "codebook_dim": 3, "separate_codebook_per_head": True}),
])
def test_softmax_losses_match_vector_quantize_pytorch(cosine, options):
    kwargs = dict(dim=8, codebook_size=16, use_cosine_sim=cosine, codebook_diversity_loss_weight=0.3,
                  codebook_diversity_temperature=5.0, rotation_trick=False, **options)
    torch.manual_seed(0)
    theirs = lucidrains.VectorQuantize(**kwargs)
    ours = VectorQuantize(**kwargs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 10, 8)
    _, index, loss, parts = ours(x, freeze_codebook=True, return_loss_breakdown=True)
    _, index_ref, loss_ref, parts_ref = theirs(x, freeze_codebook=True, return_loss_breakdown=True)
    assert torch.equal(index, index_ref)
    torch.testing.assert_close(parts.commitment, parts_ref.commitment)
    torch.testing.assert_close(parts.codebook_diversity, parts_ref.codebook_diversity)
    torch.testing.assert_close(loss, loss_ref)
    target = torch.randint(0, 16, index.shape)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x, indices=target)[1], theirs(x, indices=target)[1])


@needs_upstream
def test_orthogonal_loss_matches_vector_quantize_pytorch():
    kwargs = dict(dim=8, codebook_size=16, orthogonal_reg_weight=2.0, rotation_trick=False)
    torch.manual_seed(0)
    theirs = lucidrains.VectorQuantize(**kwargs)
    ours = VectorQuantize(**kwargs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 10, 8)
    _, _, loss, parts = ours(x, return_loss_breakdown=True)
    _, _, loss_ref, parts_ref = theirs(x, return_loss_breakdown=True)
    torch.testing.assert_close(parts.orthogonal_reg, parts_ref.orthogonal_reg)
    torch.testing.assert_close(loss, loss_ref)


@needs_upstream
@pytest.mark.parametrize("rotation", [False, True])
def test_input_gradients_match_vector_quantize_pytorch(rotation):
    kwargs = dict(dim=8, codebook_size=16, rotation_trick=rotation, commitment_weight=0.4)
    torch.manual_seed(0)
    theirs = lucidrains.VectorQuantize(**kwargs)
    ours = VectorQuantize(**kwargs)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 10, 8)
    w = torch.randn(2, 10, 8)
    grads = []
    for layer in (ours, theirs):
        xi = x.clone().requires_grad_()
        q, _, loss = layer(xi, freeze_codebook=True)
        ((q * w).sum() + loss).backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1])
