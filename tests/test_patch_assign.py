"""patch_assign against its reference: values, indices, distances, gradients, bad input, opcheck."""

import zlib

import pytest
import torch
from conftest import raises_value_error

import patchvq
from patchvq.ops import backend
from patchvq.reference.patch_assign import patch_assign as reference_assign
from patchvq.reference.patch_assign import patch_assign_backward as reference_backward
from patchvq.reference.patch_assign import patch_assign_dense, upsample

# (batch, dim, finest grid h x w, factors of each level relative to the finest)
SHAPES = [
    (2, 5, (8, 8), (1, 2, 4)),
    (3, 7, (12, 20), (1, 2, 4)),
    (1, 3, (6, 10), (1, 2)),
    (2, 4, (3, 5), (1,)),
    (1, 6, (16, 8), (1, 4, 8)),
    (0, 4, (8, 8), (1, 2, 4)),
]


def make_levels(batch, dim, grid, factors, dtype=torch.float32, device="cpu", scale=1.0, generator=None):
    h, w = grid
    return [
        (scale * torch.randn(batch, dim, h // f, w // f, dtype=torch.float64, generator=generator)).to(dtype).to(device)
        for f in factors
    ]


def make_choice(batch, grid, factors, device="cpu", generator=None):
    coarse = factors[-1]
    return torch.randint(0, len(factors), (batch, grid[0] // coarse, grid[1] // coarse), generator=generator).to(device)


def chosen_vectors(levels, indices):
    """Every chosen vector in float64 [M, D] and its code index [M], levels concatenated."""
    rows, idx = [], []
    for lv, index in zip(levels, indices):
        hit = index >= 0
        rows.append(lv.permute(0, 2, 3, 1)[hit.to(lv.device)].double().cpu())
        idx.append(index[hit].cpu())
    return torch.cat(rows), torch.cat(idx)


def assert_indices_match(levels, codebook, got, want, metric="l2"):
    """Indices agree wherever the float64 margin between best and second best exceeds the rounding
    bound; elsewhere the chosen code's float64 distance equals the minimum within that bound."""
    for g, w in zip(got, want):
        assert torch.equal(g.cpu() < 0, w.cpu() < 0), "the set of chosen cells differs from the reference"
    x, index = chosen_vectors(levels, got)
    if x.shape[0] == 0:
        return
    cb = codebook.double().cpu()
    if metric == "cosine":
        x, cb = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(cb, dim=1)
    dist = torch.cdist(x, cb).pow(2)
    eps = torch.finfo(levels[0].dtype if levels[0].dtype != torch.bfloat16 else torch.float32).eps
    bound = 8 * eps * x.shape[1] * (x.pow(2).sum(1) + cb.pow(2).sum(1).max())
    best = dist.min(1).values
    assert torch.all(dist.gather(1, index[:, None])[:, 0] - best <= bound), "a chosen code is not nearest"
    if cb.shape[0] == 1:
        assert torch.equal(index, torch.zeros_like(index)), "with one code every chosen vector takes it"
        return
    second = dist.topk(2, dim=1, largest=False).values[:, 1]
    clear = (second - best) > bound
    _, want_index = chosen_vectors(levels, want)
    assert torch.equal(index[clear], want_index[clear])


def distance_tolerance(levels, codebook):
    eps = torch.finfo(torch.float64 if levels[0].dtype == torch.float64 else torch.float32).eps
    magnitude = max(lv.abs().max().item() if lv.numel() else 0.0 for lv in levels) + codebook.abs().max().item()
    return 8 * eps * levels[0].shape[1] * magnitude**2 + 1e-30


def check_outputs(levels, choice, codebook, metric="l2"):
    z_q, indices, distance = patchvq.patch_assign(levels, choice, codebook, metric)
    want_z, want_idx, want_dist = reference_assign([lv.cpu() for lv in levels], choice.cpu(), codebook.cpu(), metric)
    assert z_q.dtype == levels[0].dtype and z_q.shape == want_z.shape and z_q.is_contiguous()
    assert [i.dtype for i in indices] == [torch.int64] * len(levels)
    assert_indices_match(levels, codebook, indices, want_idx, metric)
    factors = [levels[0].shape[2] // lv.shape[2] for lv in levels]
    # z_q holds exactly the chosen codes, nearest-upsampled from the op's own indices.
    expect = torch.zeros_like(want_z)
    for index, f in zip(indices, factors):
        up = index.cpu().repeat_interleave(f, 1).repeat_interleave(f, 2)
        hit = up >= 0
        codes = codebook.cpu()[up.clamp_min(0)].to(levels[0].dtype).permute(0, 3, 1, 2)
        expect = torch.where(hit[:, None], codes, expect)
    assert torch.equal(z_q.cpu(), expect)
    # Every fine cell holds the distance of its covering vector to the code the op chose for it
    # (the reference's distance wherever the indices agree), whether or not all indices agree.
    tol = distance_tolerance(levels, codebook)
    torch.testing.assert_close(distance.cpu().double(), own_distance(levels, indices, codebook, metric), atol=tol, rtol=0)
    agree = [upsample(g.cpu() == w, f, 1) for g, w, f in zip(indices, want_idx, factors)]
    covered = [upsample(w >= 0, f, 1) for w, f in zip(want_idx, factors)]
    same_cell = torch.stack([a & c for a, c in zip(agree, covered)]).any(0)
    torch.testing.assert_close(distance.cpu()[same_cell], want_dist[same_cell], atol=tol, rtol=0)
    return z_q, indices, distance


def own_distance(levels, indices, codebook, metric):
    """float64 distance map [B, H_0, W_0]: each fine cell's covering vector against the code of the
    op's own index for it."""
    factors = [levels[0].shape[2] // lv.shape[2] for lv in levels]
    b, _, h, w = levels[0].shape
    out = torch.zeros(b, h, w, dtype=torch.float64)
    cb = codebook.detach().cpu().double()
    for lv, index, f in zip(levels, indices, factors):
        idx = index.cpu()
        vectors = lv.detach().cpu().double().permute(0, 2, 3, 1)
        codes = cb[idx.clamp_min(0)]
        if metric == "cosine":
            unit = torch.nn.functional.normalize
            dist = 1.0 - (unit(vectors, dim=-1) * unit(codes, dim=-1)).sum(-1)
        else:
            dist = (vectors - codes).pow(2).sum(-1)
        out = torch.where(upsample(idx >= 0, f, 1), upsample(dist, f, 1), out)
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(kernel_backend, device, shape, dtype):
    batch, dim, grid, factors = shape
    gen = torch.Generator().manual_seed(zlib.crc32(repr((shape, dtype)).encode()))
    levels = make_levels(batch, dim, grid, factors, dtype, device, generator=gen)
    choice = make_choice(batch, grid, factors, device, generator=gen)
    codebook = torch.randn(11, dim, dtype=torch.float64, generator=gen).to(dtype).to(device)
    for metric in ("l2", "cosine"):
        check_outputs(levels, choice, codebook, metric)


def test_equals_dense_composition_exactly(kernel_backend, device):
    """With well separated codes the fused op and the full composition agree bit for bit."""
    gen = torch.Generator().manual_seed(3)
    codebook = 10 * torch.randn(32, 8, generator=gen)
    grid, factors = (16, 16), (1, 2, 4)
    picks = [torch.randint(0, 32, (2, 16 // f, 16 // f), generator=gen) for f in factors]
    levels = [(codebook[p] + 0.01 * torch.randn(*p.shape, 8, generator=gen)).permute(0, 3, 1, 2) for p in picks]
    levels = [lv.to(device) for lv in levels]
    choice = make_choice(2, grid, factors, device, generator=gen)
    fused = patchvq.patch_assign(levels, choice, codebook.to(device))
    dense = patch_assign_dense(levels, choice, codebook.to(device), search=patchvq.nearest_code)
    assert torch.equal(fused[0], dense[0])
    assert all(torch.equal(a, b) for a, b in zip(fused[1], dense[1]))
    torch.testing.assert_close(fused[2], dense[2], atol=distance_tolerance(levels, codebook), rtol=0)


def test_single_code_ties_and_large_values(kernel_backend, device):
    gen = torch.Generator().manual_seed(5)
    levels = make_levels(2, 4, (8, 8), (1, 2, 4), device=device, scale=1e4, generator=gen)
    choice = make_choice(2, (8, 8), (1, 2, 4), device, generator=gen)
    one = torch.randn(1, 4, generator=gen).to(device)
    _, indices, _ = check_outputs(levels, choice, one)
    assert all(bool((i <= 0).all()) for i in indices)
    row = torch.randn(1, 4, generator=gen)
    tied = torch.cat([row, row, row]).to(device)
    _, indices, _ = patchvq.patch_assign(levels, choice, tied)
    assert all(bool((i <= 0).all()) for i in indices), "ties must go to the smallest index"


def test_non_contiguous_and_half(kernel_backend, device):
    gen = torch.Generator().manual_seed(7)
    base = make_levels(2, 6, (8, 16), (1, 2, 4), device=device, generator=gen)
    choice = make_choice(2, (8, 16), (1, 2, 4), device, generator=gen).int()
    codebook = torch.randn(9, 12, generator=gen).to(device)[:, ::2]
    channels_last = [lv.contiguous(memory_format=torch.channels_last) for lv in base]
    check_outputs(channels_last, choice, codebook)
    sliced = [torch.cat([lv, lv], 3)[..., ::2] for lv in base]
    check_outputs(sliced, choice, codebook)
    half = [lv.to(torch.bfloat16) for lv in base]
    z_q, _, distance = check_outputs(half, choice, codebook)
    assert z_q.dtype == torch.bfloat16 and distance.dtype == torch.float32


def test_backward_matches_reference(kernel_backend, device):
    gen = torch.Generator().manual_seed(11)
    factors = (1, 2, 4)
    choice = make_choice(3, (12, 8), factors, device, generator=gen)
    grad = torch.randn(3, 5, 12, 8, dtype=torch.float64, generator=gen).to(device)
    got = backend.implementation("patch_assign_backward", grad.device)(grad, choice, list(factors))
    want = reference_backward(grad.cpu(), choice.cpu(), list(factors))
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, atol=1e-12, rtol=1e-12)


def test_gradient_is_straight_through_sum(kernel_backend, device):
    gen = torch.Generator().manual_seed(13)
    levels = [lv.requires_grad_() for lv in make_levels(2, 3, (8, 8), (1, 2, 4), torch.float64, device, generator=gen)]
    choice = make_choice(2, (8, 8), (1, 2, 4), device, generator=gen)
    codebook = torch.randn(6, 3, dtype=torch.float64, generator=gen).to(device).requires_grad_()
    weight = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=gen).to(device)
    z_q, _, _ = patchvq.patch_assign(levels, choice, codebook)
    got = torch.autograd.grad((z_q * weight).sum(), levels)
    plain = [lv.detach().cpu().requires_grad_() for lv in levels]
    want_z, _, _ = reference_assign(plain, choice.cpu(), codebook.detach().cpu())
    want = torch.autograd.grad((want_z * weight.cpu()).sum(), plain)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, atol=1e-12, rtol=0)
    z_q, _, _ = patchvq.patch_assign(levels, choice, codebook)
    assert z_q.grad_fn is not None
    (grad_codebook,) = torch.autograd.grad(z_q.sum(), codebook, allow_unused=True)
    assert grad_codebook is None or not bool(grad_codebook.any()), "the codebook must get no gradient"


def merged_vectors(levels, choice):
    """The input vectors themselves, selected by choice and nearest-upsampled to the finest grid:
    the map whose Jacobian the straight-through backward of patch_assign must equal."""
    factors = [levels[0].shape[2] // lv.shape[2] for lv in levels]
    out = torch.zeros_like(levels[0])
    for level, (lv, f) in enumerate(zip(levels, factors)):
        hit = upsample(choice == level, factors[-1], 1)
        out = torch.where(hit[:, None], upsample(lv, f, 2), out)
    return out


@pytest.mark.parametrize(
    "kernel_backend", ["native", pytest.param("triton", marks=pytest.mark.slow)], indirect=True
)  # gradcheck under the Triton interpreter takes minutes: in `make test-slow`
def test_gradcheck(kernel_backend, device):
    """The forward is piecewise constant, so gradcheck runs on z_q's straight-through surrogate:
    the value of merged_vectors with the gradient of patch_assign."""
    gen = torch.Generator().manual_seed(17)
    levels = [lv.requires_grad_() for lv in make_levels(2, 3, (4, 8), (1, 2, 4), torch.float64, device, generator=gen)]
    choice = make_choice(2, (4, 8), (1, 2, 4), device, generator=gen)
    codebook = torch.randn(5, 3, dtype=torch.float64, generator=gen).to(device)

    def surrogate(*lv):
        z_q = patchvq.patch_assign(list(lv), choice, codebook)[0]
        return z_q - z_q.detach() + merged_vectors(list(lv), choice).detach()

    assert torch.autograd.gradcheck(surrogate, tuple(levels), nondet_tol=0.0)


def test_opcheck(kernel_backend, device):
    gen = torch.Generator().manual_seed(19)
    levels = make_levels(2, 4, (8, 8), (1, 2, 4), device=device, generator=gen)
    choice = make_choice(2, (8, 8), (1, 2, 4), device, generator=gen)
    codebook = torch.randn(7, 4, generator=gen).to(device)
    patchvq.patch_assign(levels, choice, codebook)
    torch.library.opcheck(torch.ops.patchvq.patch_assign.default, (levels, choice, codebook, "l2", True))
    grad = torch.randn(2, 4, 8, 8, generator=gen).to(device)
    torch.library.opcheck(torch.ops.patchvq.patch_assign_backward.default, (grad, choice, [1, 2, 4]))


@pytest.mark.parametrize("bad", [-1, 3])
def test_choice_out_of_range(kernel_backend, device, bad):
    levels = make_levels(1, 4, (8, 8), (1, 2, 4), device=device)
    choice = torch.zeros(1, 2, 2, dtype=torch.int64, device=device)
    choice[0, 1, 0] = bad
    raises_value_error(device, lambda: patchvq.patch_assign(levels, choice, torch.randn(3, 4, device=device)), "choice")


def test_non_finite_values_are_errors(kernel_backend, device):
    levels = make_levels(1, 4, (8, 8), (1, 2), device=device)
    choice = torch.zeros(1, 4, 4, dtype=torch.int64, device=device)
    codebook = torch.randn(3, 4, device=device)
    levels[0][0, 2, 1, 1] = float("nan")
    raises_value_error(device, lambda: patchvq.patch_assign(levels, choice, codebook), "NaN or Inf")
    bad_codebook = codebook.clone()
    bad_codebook[1, 0] = float("inf")
    fresh = make_levels(1, 4, (8, 8), (1, 2), device=device)
    raises_value_error(device, lambda: patchvq.patch_assign(fresh, choice, bad_codebook), "NaN or Inf")
    # A NaN in a vector no patch chose is never read.
    levels[1].zero_()
    levels[0][0, 2, 1, 1] = float("nan")
    patchvq.patch_assign(levels, torch.ones_like(choice), codebook)


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("ordering", "finest first"),
        ("non_power", "power of two"),
        ("uneven", "divide"),
        ("dim", "D="),
        ("choice_shape", "choice must be"),
        ("choice_float", "integer"),
        ("dtype_mix", "dtype"),
        ("empty_codebook", "empty"),
        ("metric", "metric"),
    ],
)
def test_bad_input_names_the_argument(device, case, pattern):
    levels = make_levels(2, 4, (12, 12), (1, 2, 4), device=device)
    choice = torch.zeros(2, 3, 3, dtype=torch.int64, device=device)
    codebook = torch.randn(5, 4, device=device)
    metric = "l2"
    if case == "ordering":
        levels = [levels[1], levels[1]]
        choice = torch.zeros(2, 6, 6, dtype=torch.int64, device=device)
    elif case == "non_power":
        levels = make_levels(2, 4, (12, 12), (1, 3), device=device)
        choice = torch.zeros(2, 4, 4, dtype=torch.int64, device=device)
    elif case == "uneven":
        levels[1] = levels[1][..., :5]
    elif case == "dim":
        codebook = torch.randn(5, 3, device=device)
    elif case == "choice_shape":
        choice = choice[:, :2]
    elif case == "choice_float":
        choice = choice.float()
    elif case == "dtype_mix":
        levels[1] = levels[1].double()
    elif case == "empty_codebook":
        codebook = codebook[:0]
    elif case == "metric":
        metric = "dot"
    with pytest.raises((ValueError, TypeError), match=pattern):
        patchvq.patch_assign(levels, choice, codebook, metric)


def test_native_kernel_checks_its_own_arguments():
    """The C++ kernels (private patchvq_native::), called directly, reject what the Python checks
    would, with the same error types."""
    try:
        assign = backend.kernel("native", "patch_assign")
        backward = backend.kernel("native", "patch_assign_backward")
    except backend.BackendUnavailable as exc:
        pytest.skip(f"native kernels unavailable: {exc}")
    levels = make_levels(1, 4, (8, 8), (1, 2, 4))
    codebook = torch.randn(3, 4)
    with pytest.raises(ValueError, match="choice"):
        assign(levels, torch.full((1, 2, 2), 5), codebook)
    with pytest.raises(TypeError, match="choice must be an integer"):
        assign(levels, torch.zeros(1, 2, 2), codebook)
    with pytest.raises(ValueError, match="finest first"):
        assign([levels[1], levels[1]], torch.zeros(1, 4, 4, dtype=torch.int64), codebook)
    with pytest.raises(ValueError, match="factors"):
        backward(torch.randn(1, 4, 8, 8), torch.zeros(1, 2, 2, dtype=torch.int64), [1, 3])
