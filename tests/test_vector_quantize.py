"""VectorQuantize: layouts, masking, loss, gradients, drop-in agreement with vector_quantize_pytorch, arguments."""

import pytest
import torch

from patchvq.layers import VectorQuantize, estimators

try:
    import vector_quantize_pytorch as lucidrains
except ImportError:  # the bench extra is not installed: only the comparisons are skipped
    lucidrains = None

needs_upstream = pytest.mark.skipif(lucidrains is None, reason="vector-quantize-pytorch (the bench extra) is not installed")


def _twins(**kwargs):
    """Our layer and vector_quantize_pytorch's with the same configuration and the same codebook state."""
    torch.manual_seed(0)
    theirs = lucidrains.VectorQuantize(rotation_trick=False, **kwargs)
    ours = VectorQuantize(**kwargs)
    with torch.no_grad():
        codes = theirs.codebook.detach().clone()
        ours.codebook_module.weight.copy_(codes)
        ours.codebook_module.ema_sum.copy_(theirs._codebook.embed_avg[0])
        ours.codebook_module.ema_count.copy_(theirs._codebook.cluster_size[0])
    return ours, theirs


def _assert_same_nearest(x_rows, codes, ours, theirs):
    """Indices agree wherever the float64 margin between best and second best exceeds the float32 rounding bound;
    elsewhere both picks are within that bound of the minimum distance."""
    dist = torch.cdist(x_rows.double(), codes.double()).pow(2)
    top2 = dist.topk(2, largest=False).values
    scale = x_rows.double().pow(2).sum(1) + codes.double().pow(2).sum(1).max()
    bound = 8 * x_rows.shape[1] * torch.finfo(torch.float32).eps * scale
    clear = (top2[:, 1] - top2[:, 0]) > bound
    assert torch.equal(ours[clear], theirs[clear])
    for pick in (ours, theirs):
        chosen = dist.gather(1, pick[:, None])[:, 0]
        assert bool((chosen - top2[:, 0] <= bound).all())


@needs_upstream
@pytest.mark.parametrize("cosine", [False, True])
def test_eval_matches_vector_quantize_pytorch(cosine):
    ours, theirs = _twins(dim=12, codebook_size=40, use_cosine_sim=cosine)
    ours.eval(), theirs.eval()
    x = torch.randn(3, 50, 12)
    q, index, loss = ours(x)
    q_ref, index_ref, loss_ref = theirs(x)
    rows = torch.nn.functional.normalize(x, dim=-1) if cosine else x
    _assert_same_nearest(rows.reshape(-1, 12), ours.codebook, index.reshape(-1), index_ref.reshape(-1))
    torch.testing.assert_close(q, ours.codebook[index])
    same = index == index_ref
    torch.testing.assert_close(q[same], q_ref[same])
    assert float(loss) == float(loss_ref) == 0.0


@needs_upstream
@pytest.mark.parametrize("masked", [False, True])
def test_training_step_matches_vector_quantize_pytorch(masked):
    """Same loss, same output and the same EMA-updated codebook after each of a few training steps."""
    ours, theirs = _twins(dim=8, codebook_size=32, decay=0.9, commitment_weight=0.7)
    for step in range(3):
        x = torch.randn(4, 30, 8) * (1 + step)
        mask = torch.rand(4, 30) < 0.7 if masked else None
        q, index, loss = ours(x, mask=mask)
        q_ref, index_ref, loss_ref = theirs(x, mask=mask)
        assert torch.equal(index, index_ref)
        torch.testing.assert_close(q, q_ref)
        torch.testing.assert_close(loss, loss_ref)
        torch.testing.assert_close(ours.codebook, theirs.codebook, rtol=1e-5, atol=1e-5)


def test_loss_is_the_commitment_formula():
    vq = VectorQuantize(dim=6, codebook_size=16, commitment_weight=0.3)
    x = torch.randn(2, 25, 6)
    mask = torch.rand(2, 25) < 0.6
    codes = vq.codebook.clone()
    _q, index, loss = vq(x, mask=mask)
    error = (x - codes[index.clamp_min(0)]).pow(2)
    torch.testing.assert_close(loss, 0.3 * error[mask].mean())
    _, _, nothing = vq(x, mask=torch.zeros(2, 25, dtype=torch.bool))
    assert float(nothing) == 0.0
    vq.eval()
    assert float(vq(x)[2]) == 0.0


def test_unmasked_loss_matches_formula_with_the_pre_update_codes():
    vq = VectorQuantize(dim=5, codebook_size=9, commitment_weight=2.0)
    x = torch.randn(3, 11, 5)
    codes = vq.codebook.clone()
    _, index, loss = vq(x)
    torch.testing.assert_close(loss, 2.0 * (x - codes[index]).pow(2).mean())


def test_straight_through_gradient_reaches_the_input():
    vq = VectorQuantize(dim=4, codebook_size=8, commitment_weight=0.5, rotation_trick=False)
    x = torch.randn(2, 10, 4, requires_grad=True)
    codes = vq.codebook.clone()
    q, index, loss = vq(x)
    weight = torch.randn_like(q)
    ((q * weight).sum() + loss).backward()
    want = weight + 0.5 * 2 * (x - codes[index]) / x.numel()
    torch.testing.assert_close(x.grad, want.detach())


@needs_upstream
def test_rotation_trick_matches_vector_quantize_pytorch():
    from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to

    x = torch.randn(30, 7, dtype=torch.float64, requires_grad=True)
    q = torch.randn(30, 7, dtype=torch.float64)
    w = torch.randn(30, 7, dtype=torch.float64)
    ours = estimators.rotation_trick(x, q)
    (grad_ours,) = torch.autograd.grad((ours * w).sum(), x)
    ref = rotate_to(x, q)
    (grad_ref,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(ours, q)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grad_ours, grad_ref)
    layer = VectorQuantize(dim=7, codebook_size=5, rotation_trick=True)
    xs = torch.randn(2, 6, 7, requires_grad=True)
    out, _, _ = layer(xs)
    out.sum().backward()
    assert xs.grad is not None and bool(xs.grad.abs().sum() > 0)


def test_learnable_codebook_trains_by_gradient():
    with pytest.raises(ValueError, match="ema_update=False"):
        VectorQuantize(dim=4, codebook_size=8, learnable_codebook=True, ema_update=True)
    vq = VectorQuantize(dim=4, codebook_size=8, learnable_codebook=True, ema_update=False)
    assert isinstance(vq.codebook, torch.nn.Parameter)
    assert any(p is vq.codebook for p in vq.parameters())
    before = vq.codebook.detach().clone()
    x = torch.randn(3, 20, 4)
    _, index, loss = vq(x)
    assert torch.equal(vq.codebook.detach(), before), "no EMA update of a learnable codebook"
    loss.backward()
    used = index.unique()
    assert bool(vq.codebook.grad[used].abs().sum(1).gt(0).all())
    torch.optim.SGD(vq.parameters(), lr=0.1).step()
    assert not torch.equal(vq.codebook.detach(), before)


def test_masked_positions_are_left_out_of_everything():
    torch.manual_seed(0)
    a = VectorQuantize(dim=5, codebook_size=12, threshold_ema_dead_code=0.0)
    b = VectorQuantize(dim=5, codebook_size=12)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 30, 5)
    mask = torch.rand(2, 30) < 0.5
    x_masked = torch.where(mask[..., None], x, torch.full_like(x, 1e4))
    q, index, loss = a(x_masked, mask=mask)
    _q_b, index_b, loss_b = b(x[mask][None])
    assert bool((index[~mask] == -1).all()) and bool((q[~mask] == 0).all())
    assert torch.equal(index[mask], index_b[0])
    torch.testing.assert_close(loss, loss_b)
    torch.testing.assert_close(a.codebook, b.codebook)
    c = VectorQuantize(dim=5, codebook_size=12, return_zeros_for_masked_padding=False)
    q_c, _, _ = c(x_masked, mask=mask)
    assert torch.equal(q_c[~mask], x_masked[~mask])
    lens = torch.tensor([3, 30])
    _, index_l, _ = c(x, lens=lens)
    assert bool((index_l[0, 3:] == -1).all()) and bool((index_l[1] >= 0).all())


@pytest.mark.parametrize(
    "kwargs, shape, index_shape",
    [
        ({}, (2, 7, 6), (2, 7)),
        ({"channel_last": False}, (2, 6, 7), (2, 7)),
        ({"accept_image_fmap": True}, (2, 6, 3, 5), (2, 3, 5)),
        ({}, (4, 6), (4,)),
        ({"codebook_dim": 3}, (2, 7, 6), (2, 7)),
        ({"codebook_dim": 3, "accept_image_fmap": True}, (2, 6, 3, 5), (2, 3, 5)),
    ],
)
def test_layouts(kwargs, shape, index_shape):
    vq = VectorQuantize(dim=6, codebook_size=10, **kwargs)
    x = torch.randn(*shape, requires_grad=True)
    q, index, loss = vq(x)
    assert q.shape == x.shape and tuple(index.shape) == index_shape and index.dtype == torch.int64
    (q.sum() + loss).backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)
    vq.eval()
    q, index, _ = vq(x)
    torch.testing.assert_close(q, vq.get_output_from_indices(index))


def test_image_map_with_mask():
    vq = VectorQuantize(dim=3, codebook_size=6, accept_image_fmap=True)
    x = torch.randn(2, 3, 4, 4)
    mask = torch.rand(2, 4, 4) < 0.5
    q, index, _ = vq(x, mask=mask)
    assert bool((index[~mask] == -1).all()) and bool((q.permute(0, 2, 3, 1)[~mask] == 0).all())


def test_half_precision_input_keeps_its_dtype():
    vq = VectorQuantize(dim=8, codebook_size=16)
    q, _, loss = vq(torch.randn(2, 5, 8, dtype=torch.bfloat16))
    assert q.dtype == torch.bfloat16 and bool(torch.isfinite(loss))


def test_freeze_codebook_keeps_codes():
    vq = VectorQuantize(dim=4, codebook_size=8, freeze_codebook=True)
    before = vq.codebook.clone()
    vq(torch.randn(2, 9, 4))
    assert torch.equal(vq.codebook, before)
    vq.freeze_codebook = False
    vq(torch.randn(2, 9, 4), freeze_codebook=True)
    assert torch.equal(vq.codebook, before)
    vq(torch.randn(2, 9, 4))
    assert not torch.equal(vq.codebook, before)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    vq = VectorQuantize(dim=6, codebook_size=16, kmeans_init=True, threshold_ema_dead_code=1, codebook_dim=4)
    for _ in range(3):
        vq(torch.randn(2, 40, 6))
    copy = VectorQuantize(dim=6, codebook_size=16, kmeans_init=True, threshold_ema_dead_code=1, codebook_dim=4)
    copy.load_state_dict(vq.state_dict())
    assert copy.usage() == vq.usage()
    x = torch.randn(2, 40, 6)
    vq.eval(), copy.eval()
    for got, want in zip(copy(x), vq(x)):
        assert torch.equal(got, want)
    vq.train(), copy.train()
    torch.manual_seed(5)
    vq(x)
    torch.manual_seed(5)
    copy(x)  # a second k-means init here would give different codes
    assert torch.equal(copy.codebook, vq.codebook)


def test_usage_is_reported():
    vq = VectorQuantize(dim=4, codebook_size=8, threshold_ema_dead_code=0.5)
    vq(torch.randn(4, 50, 4))
    usage = vq.usage()
    assert set(usage) == {"perplexity", "live_fraction", "revived"}
    assert 1.0 <= usage["perplexity"] <= 8.0 and 0.0 <= usage["live_fraction"] <= 1.0


def test_option_conflicts_and_unknown_arguments_raise():
    with pytest.raises(ValueError, match="rotation_trick=False"):
        VectorQuantize(dim=4, codebook_size=8, straight_through=True)
    with pytest.raises(ValueError, match="threshold_ema_dead_code"):
        VectorQuantize(dim=4, codebook_size=8, directional_reparam=True)
    with pytest.raises(TypeError, match="no_such_option"):
        VectorQuantize(dim=4, codebook_size=8, no_such_option=1)


@pytest.mark.parametrize(
    "lens, error, words",
    [
        (torch.tensor([3, 4, 5]), ValueError, r"lens must have shape \[B\] = \(2,\), got \(3,\)"),
        (torch.tensor(3), ValueError, r"lens must have shape \[B\] = \(2,\), got \(\)"),
        ([3, 4], TypeError, "lens must be an integer tensor"),
        (torch.tensor([1.0, 2.0]), TypeError, "lens must be an integer tensor"),
    ],
)
def test_bad_lens_is_named(lens, error, words):
    vq = VectorQuantize(dim=4, codebook_size=8)
    with pytest.raises(error, match=words):
        vq(torch.randn(2, 6, 4), lens=lens)


@pytest.mark.parametrize(
    "x, mask, error, words",
    [
        (torch.randn(2, 3, 5), None, ValueError, "dim=4"),
        (torch.randn(2, 3, 4, 4, 4), None, ValueError, "got"),
        (torch.ones(2, 3, 4, dtype=torch.int64), None, TypeError, "floating"),
        (torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool), ValueError, "mask must have shape"),
        (torch.randn(2, 3, 4), torch.ones(2, 3), TypeError, "bool"),
    ],
)
def test_bad_input_is_named(x, mask, error, words):
    vq = VectorQuantize(dim=4, codebook_size=8)
    with pytest.raises(error, match=words):
        vq(x, mask=mask)


def test_drop_in_import_paths():
    import patchvq
    import patchvq.layers

    assert patchvq.VectorQuantize is VectorQuantize is patchvq.layers.VectorQuantize
    assert patchvq.layers.Codebook is type(VectorQuantize(dim=2, codebook_size=3).codebook_module)
    with pytest.raises(AttributeError, match="no_such_layer"):
        patchvq.layers.no_such_layer  # noqa: B018


def test_fused_straight_through_equals_the_plain_one():
    codes = torch.randn(9, 5, dtype=torch.float64)
    index = torch.randint(0, 9, (20,))
    x = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(20, 5, dtype=torch.float64)
    fused = estimators.straight_through_codes(x, codes, index)
    (grad_fused,) = torch.autograd.grad((fused * weight).sum(), x)
    plain = estimators.straight_through(x, codes[index])
    (grad_plain,) = torch.autograd.grad((plain * weight).sum(), x)
    assert torch.equal(fused, codes[index]), "exactly the codes (x + (q - x) may round)"
    torch.testing.assert_close(fused, plain)
    assert torch.equal(grad_fused, grad_plain)


@pytest.mark.parametrize("shape", [(0, 5, 4), (2, 0, 4)])
def test_empty_batch(shape):
    vq = VectorQuantize(dim=4, codebook_size=6, kmeans_init=True, threshold_ema_dead_code=1.0)
    x = torch.randn(*shape, requires_grad=True)
    q, index, loss = vq(x)
    assert q.shape == x.shape and index.shape == shape[:2] and float(loss) == 0.0
    assert not bool(vq.codebook_module.initialised), "k-means waits for a batch with rows"
    (q.sum() + loss).backward()


def test_lean_rotation_trick_equals_the_plain_one():
    x = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    q = torch.randn(40, 6, dtype=torch.float64)
    q[0] = 0  # a zero code and a zero input take the clamped branch
    x.data[1] = 0
    w = torch.randn(40, 6, dtype=torch.float64)
    plain = estimators.rotation_trick(x, q)
    (grad_plain,) = torch.autograd.grad((plain * w).sum(), x)
    lean = estimators.rotation_trick_lean(x, q)
    (grad_lean,) = torch.autograd.grad((lean * w).sum(), x)
    assert torch.equal(lean, plain)
    torch.testing.assert_close(grad_lean, grad_plain)
    torch.testing.assert_close(estimators.rotation_trick_grad(x.detach(), q, w), grad_plain)
