"""nearest_code against the float64 oracle, on every fast backend (kernel_backend) and device."""

import pytest
import torch
from conftest import raises_value_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from search_oracle import assert_nearest, exact_distances

import patchvq
from patchvq import reference

# The Triton interpreter runs a kernel element by element: keep its searches small.
TRITON_MAX_WORK = 40_000
METRICS = ("l2", "cosine")


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as t[N, D] laid out contiguous, column-major, or as a strided slice."""
    if kind == "transposed":
        return t.t().contiguous().t()
    if kind == "strided":
        wide = torch.zeros(t.shape[0] * 2, t.shape[1] * 3, dtype=t.dtype, device=t.device)
        wide[::2, ::3] = t
        return wide[::2, ::3]
    return t


def random_case(n, k, d, scale, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g) * scale).to(device)
    codebook = (torch.randn(k, d, generator=g) * scale).to(device)
    return x, codebook


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.sampled_from([0, 1, 2, 13, 14, 15, 29, 64, 97]),
    k=st.sampled_from([1, 2, 7, 31, 32, 33, 65]),
    d=st.sampled_from([1, 3, 16, 17, 40]),
    metric=st.sampled_from(METRICS),
    x_layout=st.sampled_from(["contiguous", "transposed", "strided"]),
    cb_layout=st.sampled_from(["contiguous", "transposed", "strided"]),
    scale=st.sampled_from([1e-3, 1.0, 1e4, 1e15]),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_oracle_on_random_shapes(kernel_backend, device, n, k, d, metric, x_layout, cb_layout, scale, seed):
    if kernel_backend == "triton" and n * k * d > TRITON_MAX_WORK:
        n = max(1, TRITON_MAX_WORK // (k * d)) if n else 0
    x, codebook = random_case(n, k, d, scale, seed, device)
    x, codebook = layout(x, x_layout), layout(codebook, cb_layout)
    index, distance = patchvq.nearest_code(x, codebook, metric)
    assert index.device == x.device and distance.dtype == torch.float32
    assert_nearest(index, distance, x, codebook, metric)


def test_agrees_with_reference_on_clear_rows(kernel_backend, device):
    x, codebook = random_case(300, 257, 37, 1.0, 0, device)
    for metric in METRICS:
        index, distance = patchvq.nearest_code(x, codebook, metric)
        ref_index, ref_distance = reference.nearest_code(x, codebook, metric)
        assert_nearest(index, distance, x, codebook, metric)
        assert (index == ref_index).float().mean() > 0.99
        torch.testing.assert_close(distance, ref_distance, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("d", [1, 5, 33])
def test_exact_ties_go_to_smallest_index(kernel_backend, device, d):
    # Small integers make every score exact, so equal scores are true ties; repeated codes tie
    # for every row, 64 apart (the same SIMD lane of different panels) and mirrored (other lanes).
    g = torch.Generator().manual_seed(d)
    base = torch.randint(-2, 3, (32, d), generator=g).float()
    codebook = torch.cat([base, base.flip(0), base]).to(device)
    x = torch.randint(-3, 4, (150, d), generator=g).float().to(device)
    index, distance = patchvq.nearest_code(x, codebook)
    expected = exact_distances(x, codebook, "l2").argmin(1)  # first minimum
    assert torch.equal(index.cpu(), expected)
    torch.testing.assert_close(
        distance.cpu().double(), exact_distances(x, codebook, "l2").min(1).values.float().double()
    )


def test_many_code_blocks_keep_order_and_ties(kernel_backend, device):
    # D=256 and K=704 span several L2-sized code blocks in the CPU kernel; the second half
    # repeats the first (in the same SIMD lanes), so rows tie across blocks and keep the first copy.
    g = torch.Generator().manual_seed(11)
    base = torch.randint(-1, 2, (352, 256), generator=g).float()
    codebook = torch.cat([base, base]).to(device)
    n = 4 if kernel_backend == "triton" else 60
    x = torch.randint(-2, 3, (n, 256), generator=g).float().to(device)
    index, distance = patchvq.nearest_code(x, codebook)
    exact = exact_distances(x, codebook, "l2")
    assert torch.equal(index.cpu(), exact.argmin(1))
    assert torch.equal(distance.cpu().double(), exact.min(1).values)


def test_codebook_larger_than_one_packing_pass(kernel_backend, device):
    # 4200 codes of D=1024 exceed the 16 MiB the CPU kernel packs at once: a second pass
    # must merge without losing ties to the first copy (codes 2100.. repeat 0..).
    g = torch.Generator().manual_seed(12)
    base = torch.randint(-1, 2, (2100, 1024), generator=g).float()
    codebook = torch.cat([base, base]).to(device)
    n = 1 if kernel_backend == "triton" else 16
    x = torch.cat([base[-n // 2 - 1 :], torch.randint(-2, 3, (n, 1024), generator=g).float()]).to(device)
    index, distance = patchvq.nearest_code(x, codebook)
    exact = exact_distances(x, codebook, "l2")
    assert torch.equal(index.cpu(), exact.argmin(1))
    assert torch.equal(distance.cpu().double(), exact.min(1).values)


def test_repeated_codes_tie_to_first_copy_under_cosine(kernel_backend, device):
    x, base = random_case(200, 40, 24, 1.0, 3, device)
    codebook = torch.cat([base, base * 2.0, base])  # a power-of-two scale normalises to the same bits
    index, _ = patchvq.nearest_code(x, codebook, "cosine")
    assert (index < 40).all()


def test_zero_code_counts_as_orthogonal_under_cosine(kernel_backend, device):
    # A zero code has cosine distance 1: it loses to any code with positive cosine and ties
    # with codes orthogonal to the row.
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], device=device)
    codebook = torch.tensor([[0.0, 0.0, 0.0], [0.3, 1.0, 0.0], [-1.0, 0.2, 0.0]], device=device)
    index, distance = patchvq.nearest_code(x, codebook, "cosine")
    assert index.tolist() == [1, 1, 2, 0]
    assert distance[3].item() == pytest.approx(1.0)
    assert_nearest(index, distance, x, codebook, "cosine")


def test_single_code_and_empty_rows(kernel_backend, device):
    x, codebook = random_case(50, 1, 9, 1.0, 1, device)
    index, distance = patchvq.nearest_code(x, codebook)
    assert torch.equal(index.cpu(), torch.zeros(50, dtype=torch.int64))
    assert_nearest(index, distance, x, codebook)
    index, distance = patchvq.nearest_code(x[:0], codebook)
    assert index.shape == (0,) and distance.shape == (0,)


def test_rows_equal_to_codes_have_zero_distance(kernel_backend, device):
    _, codebook = random_case(0, 70, 19, 10.0, 2, device)
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(0)).to(device)
    index, distance = patchvq.nearest_code(codebook[perm], codebook)
    assert torch.equal(index, perm)
    assert (distance == 0).all()


def test_float64_is_searched_in_float64(kernel_backend, device):
    x, codebook = random_case(80, 45, 11, 1.0, 4, device)
    x, codebook = x.double(), codebook.double()
    for metric in METRICS:
        index, distance = patchvq.nearest_code(x, codebook, metric)
        assert distance.dtype == torch.float64
        assert_nearest(index, distance, x, codebook, metric, dtype=torch.float64)


@pytest.mark.parametrize(
    ("x_dtype", "codebook_dtype", "searched"),
    [
        (torch.float32, torch.float64, torch.float32),
        (torch.float64, torch.float32, torch.float64),
        (torch.bfloat16, torch.float32, torch.float32),
        (torch.float32, torch.float16, torch.float32),
    ],
)
def test_mixed_dtypes_are_searched_in_the_accumulation_dtype_of_x(
    kernel_backend, device, x_dtype, codebook_dtype, searched
):
    x, codebook = random_case(70, 29, 12, 1.0, 6, device)
    x, codebook = x.to(x_dtype), codebook.to(codebook_dtype)
    for metric in METRICS:
        index, distance = patchvq.nearest_code(x, codebook, metric)
        assert distance.dtype == searched
        assert_nearest(index, distance, x.to(searched), codebook.to(searched), metric, dtype=searched)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_search_the_rounded_values(kernel_backend, device, dtype):
    x, codebook = random_case(60, 33, 16, 1.0, 5, device)
    x, codebook = x.to(dtype), codebook.to(dtype)
    index, distance = patchvq.nearest_code(x, codebook)
    assert distance.dtype == torch.float32
    assert_nearest(index, distance, x.float(), codebook.float())


@pytest.mark.parametrize("where", ["x", "codebook"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_input_raises_naming_it(kernel_backend, device, where, bad):
    x, codebook = random_case(40, 10, 6, 1.0, 6, device)
    target = x if where == "x" else codebook
    target[-1, -1] = bad
    raises_value_error(device, lambda: patchvq.nearest_code(x, codebook), f"{where} contains NaN or Inf")
    index, _ = patchvq.nearest_code(x, codebook, check_finite=False)
    assert ((index >= 0) & (index < 10)).all()


@pytest.mark.parametrize(
    ("x_shape", "cb_shape", "x_dtype", "message"),
    [
        ((4,), (3, 4), torch.float32, "x must be 2-D"),
        ((2, 4), (3, 4, 1), torch.float32, "codebook must be 2-D"),
        ((2, 4), (3, 5), torch.float32, "x has D=4 but codebook has D=5"),
        ((2, 4), (0, 4), torch.float32, "codebook is empty"),
        ((2, 4), (3, 4), torch.int64, "x must be a floating-point tensor"),
    ],
)
def test_bad_arguments_name_the_argument(kernel_backend, device, x_shape, cb_shape, x_dtype, message):
    x = torch.ones(x_shape, dtype=x_dtype, device=device)
    codebook = torch.ones(cb_shape, device=device)
    with pytest.raises((ValueError, TypeError), match=message):
        patchvq.nearest_code(x, codebook)


def test_bad_metric_and_mixed_devices(kernel_backend, device):
    x, codebook = random_case(3, 2, 4, 1.0, 7, device)
    with pytest.raises(ValueError, match="metric"):
        patchvq.nearest_code(x, codebook, "manhattan")
    with pytest.raises(ValueError, match="x on .*codebook on meta"):
        patchvq.nearest_code(x, codebook.to("meta"))


def test_native_kernel_checks_its_own_arguments(device):
    """The C++ kernel (private patchvq_native::), called without the Python checks, raises the
    same error types, naming the argument."""
    from patchvq.ops import backend

    try:
        op = backend.kernel("native", "nearest_code", device)
    except backend.BackendUnavailable as exc:
        pytest.skip(f"native kernels unavailable: {exc}")
    with pytest.raises(ValueError, match="x has D=3 but codebook has D=4"):
        op(torch.ones(2, 3, device=device), torch.ones(5, 4, device=device))
    with pytest.raises(ValueError, match="codebook must be 2-D"):
        op(torch.ones(2, 3, device=device), torch.ones(5, device=device))
    with pytest.raises(TypeError, match="x must be a floating"):
        op(torch.ones(2, 3, dtype=torch.int64, device=device), torch.ones(5, 3, device=device))
    with pytest.raises(ValueError, match="metric must be"):
        op(torch.ones(2, 3, device=device), torch.ones(5, 3, device=device), "dot")


def test_opcheck(kernel_backend, device):
    """The public op, whichever backend runs it (the reference in test_ops_library.py)."""
    x, codebook = random_case(33, 17, 5, 1.0, 8, device)
    for metric in METRICS:
        torch.library.opcheck(torch.ops.patchvq.nearest_code.default, (x, codebook, metric, True))


@pytest.mark.parametrize(
    "kernel_backend", ["native", pytest.param("triton", marks=pytest.mark.slow)], indirect=True
)  # gradcheck under the Triton interpreter takes minutes: in `make test-slow`
@pytest.mark.parametrize("metric", METRICS)
def test_gradients_in_float64(kernel_backend, device, metric):
    x, codebook = random_case(12, 7, 5, 1.0, 9, device)
    xs = x.double().requires_grad_()
    cb = codebook.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: patchvq.nearest_code(a, b, metric)[1], (xs, cb))


def test_oracle_rejects_a_wrong_answer():
    x, codebook = random_case(200, 50, 8, 1.0, 10, "cpu")
    index, distance = reference.nearest_code(x, codebook)
    with pytest.raises(AssertionError, match="clear margin"):
        assert_nearest((index + 1) % 50, distance, x, codebook)
    with pytest.raises(AssertionError, match="distance off"):
        assert_nearest(index, distance * 1.01 + 1e-3, x, codebook)
