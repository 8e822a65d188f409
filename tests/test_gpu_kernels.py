"""What the GPU kernels compute, against the references: Triton and CUDA alike.

The `gpu_op` fixture gives each op from the Triton kernels (CUDA tensors, or CPU tensors under
the Triton interpreter as on a machine without a GPU) and from the CUDA extension (only where
a CUDA device is the test device: PATCHVQ_TEST_DEVICE=cuda). Covered: tile and block edges
(odd sizes, K=1, N=0, D past one chunk), strided inputs, ties across blocks, atomics under
contention, gathers from strided maps, and the half-precision exactness rule.
"""

import os

import pytest
import torch
from conftest import raises_value_error, triton_missing
from search_oracle import assert_nearest

from patchvq import reference


def _triton_op(name):
    from patchvq.ops import backend

    return backend.kernel("triton", name, "cuda" if torch.cuda.is_available() else "cpu")


def _cuda_op(name):
    from patchvq.ops import backend

    return backend.kernel("native", name, "cuda")


@pytest.fixture(params=["triton", "cuda"])
def gpu_op(request, device):
    """op name -> callable with the schema's positional arguments, for one GPU implementation."""
    if request.param == "triton":
        if triton_missing():
            pytest.skip(triton_missing())
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton runs CPU tensors only under TRITON_INTERPRET=1")
        return _triton_op
    if device.type != "cuda":
        pytest.skip("the CUDA kernels need a CUDA test device (PATCHVQ_TEST_DEVICE=cuda)")
    return _cuda_op


# ---- nearest_code: the tiling --------------------------------------------------------------


def assert_same_search(gpu_op, x, cb, metric="l2"):
    index, distance = gpu_op("nearest_code")(x, cb, metric, True)
    assert_nearest(index, distance, x, cb, metric)


@pytest.mark.parametrize(
    "n, k, d",
    [(1, 1, 1), (17, 1, 3), (16, 16, 16), (33, 47, 19), (40, 35, 300)],  # 300 > 256: D in chunks
)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_search_matches_reference_across_block_edges(gpu_op, device, n, k, d, metric):
    g = torch.Generator().manual_seed(n * 1000 + k * 10 + d)
    x = torch.randn(n, d, generator=g).to(device)
    cb = torch.randn(k, d, generator=g).to(device)
    assert_same_search(gpu_op, x, cb, metric)


def test_search_on_empty_x_and_non_contiguous_inputs(gpu_op, device):
    cb = torch.randn(6, 5, device=device)
    index, distance = gpu_op("nearest_code")(torch.empty(0, 5, device=device), cb, "l2", True)
    assert index.shape == (0,) and distance.shape == (0,)
    g = torch.Generator().manual_seed(2)
    cb_t = torch.randn(14, 20, generator=g).to(device).t().contiguous().t()  # column-major [14, 20]
    xs = torch.randn(9, 60, generator=g).to(device)[:, ::3]
    assert not xs.is_contiguous() and not cb_t.is_contiguous()
    assert_same_search(gpu_op, xs, cb_t)


def test_ties_go_to_the_smallest_index_across_blocks(gpu_op, device):
    # 40 codes, several blocks of 16: identical codes at 3, 19 and 35, and x equal to them.
    cb = torch.randn(40, 8, device=device)
    cb[19] = cb[3]
    cb[35] = cb[3]
    x = cb[[35, 19, 3]].clone()
    index, _ = gpu_op("nearest_code")(x, cb, "l2", True)
    assert index.tolist() == [3, 3, 3]
    # Exact ties of integer-valued data: every code equally far from the zero vector.
    ring = torch.tensor([[2.0, 0.0], [0.0, 2.0], [-2.0, 0.0], [0.0, -2.0]], device=device).repeat(9, 1)
    index, distance = gpu_op("nearest_code")(torch.zeros(5, 2, device=device), ring, "l2", True)
    assert index.tolist() == [0] * 5 and distance.tolist() == [4.0] * 5


def test_non_finite_input_is_an_error(gpu_op, device):
    x = torch.randn(4, 3, device=device)
    x[2, 1] = float("nan")
    raises_value_error(device, lambda: gpu_op("nearest_code")(x, torch.randn(2, 3, device=device), "l2", True),
                       "x contains NaN")
    cb = torch.randn(2, 3, device=device)
    cb[1, 0] = float("inf")
    raises_value_error(device, lambda: gpu_op("nearest_code")(x.nan_to_num(), cb, "l2", True), "codebook contains NaN")
    index, _ = gpu_op("nearest_code")(x, cb, "l2", False)  # unchecked: runs, whatever it finds
    assert index.shape == (4,)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_search_is_the_float32_search_on_the_rounded_inputs(gpu_op, device, dtype):
    """Half inputs are multiplied exactly and summed in float32: so every row whose float64
    margin exceeds the float32 rounding bound must pick the exact code, and every other row a
    code within that bound. The bound is ~2^16 (bf16) or ~2^13 (fp16) times tighter than
    half-precision accumulation would need, so a kernel rounding to half fails here."""
    g = torch.Generator().manual_seed(3)
    n, k, d = 300, 64, 48
    x = (torch.randn(n, d, generator=g) * 3).to(dtype)
    cb = (torch.randn(k, d, generator=g) * 3).to(dtype)
    # Near-ties: codes that differ from another code in a single last bit.
    cb[k // 2 :] = (cb[: k // 2].float() * (1 + torch.finfo(dtype).eps)).to(dtype)
    index, distance = gpu_op("nearest_code")(x.to(device), cb.to(device), "l2", True)
    clear = assert_nearest(index, distance, x, cb)
    assert clear.sum() > n // 2, "the data should make most rows decidable"
    ref_index, _ = reference.nearest_code(x, cb)
    assert torch.equal(index.cpu()[clear], ref_index[clear])


# ---- code_stats: atomics ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_code_stats_with_many_rows_on_one_code(gpu_op, device, dtype):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(97, 21, generator=g).to(dtype)
    index = torch.randint(-1, 3, (97,), generator=g)
    index[:40] = 1  # contention on one code
    count, total = gpu_op("code_stats")(x.to(device), index.to(device), 5)
    ref_count, ref_total = reference.code_stats(x, index, 5)
    assert count.dtype == ref_count.dtype and torch.equal(count.cpu(), ref_count)
    eps = torch.finfo(ref_total.dtype).eps
    assert torch.allclose(total.cpu(), ref_total, rtol=0, atol=97 * eps * float(x.double().abs().max()))


def test_code_stats_edges(gpu_op, device):
    empty_index = torch.empty(0, dtype=torch.int64, device=device)
    count, total = gpu_op("code_stats")(torch.empty(0, 4, device=device), empty_index, 3)
    assert count.tolist() == [0, 0, 0] and total.shape == (3, 4)
    # D = 0: no sums, but the rows are still counted.
    count, total = gpu_op("code_stats")(torch.empty(4, 0, device=device), torch.tensor([1, -1, 1, 0], device=device), 3)
    assert count.tolist() == [1, 2, 0] and total.shape == (3, 0)
    x = torch.randn(8, 30, device=device)[:, ::2]
    index = torch.tensor([0, 2, 2, -1, 1, 0, 2, -5], device=device)
    count, total = gpu_op("code_stats")(x, index, 3)
    ref_count, ref_total = reference.code_stats(x.cpu(), index.cpu(), 3)
    assert torch.equal(count.cpu(), ref_count) and torch.allclose(total.cpu(), ref_total, atol=1e-5)
    bad = torch.tensor([0, 3, 0, 0, 0, 0, 0, 0], device=device)
    raises_value_error(device, lambda: gpu_op("code_stats")(x, bad, 3), "num_codes")


# ---- patch_assign: gathers and painting ------------------------------------------------------


def assert_same_codes(z_q, ref_z, levels):
    """z_q holds the codes; the reference's straight-through sum v + (e - v) equals them to rounding."""
    eps = torch.finfo(ref_z.dtype).eps
    scale = max(float(lv.double().abs().max()) for lv in levels)
    torch.testing.assert_close(z_q.cpu(), ref_z, rtol=2 * eps, atol=2 * eps * scale)


def pyramid(g, batch, dim, fine, factors, dtype=torch.float32, channels_last=False):
    levels = [torch.randn(batch, dim, fine // f, fine // f, generator=g).to(dtype) for f in factors]
    if channels_last:
        levels = [lv.to(memory_format=torch.channels_last) for lv in levels]
    return levels


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_patch_assign_matches_reference(gpu_op, device, metric, channels_last):
    g = torch.Generator().manual_seed(5)
    levels = pyramid(g, 2, 5, 8, [1, 2, 4], channels_last=channels_last)
    choice = torch.randint(0, 3, (2, 2, 2), generator=g)
    choice[1] = 0  # the second image at the finest level only
    cb = torch.randn(11, 5, generator=g)
    on_device = [lv.to(device) for lv in levels]
    z_q, indices, distance = gpu_op("patch_assign")(on_device, choice.to(device), cb.to(device), metric, True)
    ref_z, ref_indices, ref_distance = reference.patch_assign(levels, choice, cb, metric)
    assert_same_codes(z_q, ref_z, levels)
    for got, want in zip(indices, ref_indices):
        assert torch.equal(got.cpu(), want)
    assert torch.allclose(distance.cpu(), ref_distance, rtol=1e-5, atol=1e-6)


def test_patch_assign_level_never_chosen_and_half_levels(gpu_op, device):
    g = torch.Generator().manual_seed(6)
    levels = pyramid(g, 1, 4, 4, [1, 2], dtype=torch.bfloat16)
    choice = torch.ones(1, 2, 2, dtype=torch.int64)
    cb = torch.randn(3, 4, generator=g).to(torch.bfloat16)
    on_device = [lv.to(device) for lv in levels]
    z_q, indices, distance = gpu_op("patch_assign")(on_device, choice.to(device), cb.to(device), "l2", True)
    ref_z, ref_indices, ref_distance = reference.patch_assign(levels, choice, cb)
    assert (indices[0] == -1).all() and torch.equal(indices[1].cpu(), ref_indices[1])
    assert z_q.dtype == torch.bfloat16
    assert_same_codes(z_q, ref_z, levels)
    assert torch.allclose(distance.cpu(), ref_distance, rtol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_patch_assign_vectors_of_width_zero_still_get_distances(gpu_op, device, metric):
    levels = [torch.empty(2, 0, 4, 4), torch.empty(2, 0, 2, 2)]
    choice = torch.tensor([[[0, 1], [1, 0]], [[1, 1], [0, 0]]])
    cb = torch.empty(3, 0)
    z_q, indices, distance = gpu_op("patch_assign")([v.to(device) for v in levels], choice.to(device), cb.to(device),
                                                    metric, True)
    ref_z, ref_indices, ref_distance = reference.patch_assign(levels, choice, cb, metric)
    assert z_q.shape == ref_z.shape == (2, 0, 4, 4)
    for got, want in zip(indices, ref_indices):
        assert torch.equal(got.cpu(), want)
    assert torch.equal(distance.cpu(), ref_distance)
    assert bool((ref_distance == (1.0 if metric == "cosine" else 0.0)).all())


def test_patch_assign_nan_only_matters_at_chosen_cells(gpu_op, device):
    levels = [torch.randn(1, 3, 4, 4, device=device), torch.randn(1, 3, 2, 2, device=device)]
    choice = torch.tensor([[[0, 0], [1, 1]]], device=device)
    levels[1][0, :, 0, 0] = float("nan")  # patch (0, 0) uses level 0: ignored
    cb = torch.randn(4, 3, device=device)
    gpu_op("patch_assign")(levels, choice, cb, "l2", True)
    levels[1][0, :, 1, 1] = float("inf")
    raises_value_error(device, lambda: gpu_op("patch_assign")(levels, choice, cb, "l2", True), r"levels\[1\]")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_patch_assign_backward_matches_reference(gpu_op, device, dtype):
    g = torch.Generator().manual_seed(7)
    grad = torch.randn(2, 3, 8, 8, generator=g).to(dtype)
    choice = torch.randint(0, 3, (2, 2, 2), generator=g)
    grads = gpu_op("patch_assign_backward")(grad.to(device), choice.to(device), [1, 2, 4])
    want = reference.patch_assign_backward(grad, choice, [1, 2, 4])
    for got, ref in zip(grads, want):
        assert got.dtype == dtype and got.shape == ref.shape
        tol = 16 * torch.finfo(dtype).eps * float(grad.double().abs().max())
        assert torch.allclose(got.cpu().double(), ref.double(), rtol=0, atol=tol)


# ---- devices ---------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_ops_run_on_the_device_of_their_tensors_not_the_current_one(gpu_op):
    g = torch.Generator().manual_seed(5)
    x, cb = torch.randn(300, 24, generator=g), torch.randn(70, 24, generator=g)
    levels = [torch.randn(2, 24, 8, 8, generator=g), torch.randn(2, 24, 4, 4, generator=g)]
    choice = torch.randint(0, 2, (2, 4, 4), generator=g)
    with torch.cuda.device(0):
        on_other = torch.device("cuda", 1)
        index, _ = gpu_op("nearest_code")(x.to(on_other), cb.to(on_other), "l2", True)
        count, _ = gpu_op("code_stats")(x.to(on_other), index, 70)
        z_q, _, _ = gpu_op("patch_assign")([v.to(on_other) for v in levels], choice.to(on_other), cb.to(on_other),
                                           "l2", True)
    assert index.device == count.device == z_q.device == on_other
    assert torch.equal(index.cpu(), reference.nearest_code(x, cb)[0])
    assert torch.equal(count.cpu(), reference.code_stats(x, index.cpu(), 70)[0])
    torch.testing.assert_close(z_q.cpu(), reference.patch_assign(levels, choice, cb)[0])
