"""patchvq.code_stats: the fast kernels against the reference, edge cases, opcheck and bad input."""

import pytest
import torch
from conftest import raises_value_error

import patchvq
from patchvq import reference
from patchvq.ops import backend
from patchvq.ops import library as code_stats_op


def _inputs(n, d, k, dtype, device, masked=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 3).to(dtype).to(device)
    index = torch.randint(0, k, (n,), generator=g)
    drop = torch.rand(n, generator=g) < masked
    index = torch.where(drop, -torch.randint(1, 4, (n,), generator=g), index).to(device)
    return x, index


def assert_same_sums(got, want, device):
    """Bit-equal on CPU, whose kernels add in a fixed order; on a GPU the kernels add with atomics,
    in an order that varies, so sums agree to rounding there: (count - 1) eps of the sum of |x|
    bounds any two orders, and counts are exact."""
    if device.type == "cpu":
        assert torch.equal(got, want)
        return
    scale = want.abs().amax() if want.numel() else 0
    torch.testing.assert_close(got, want, rtol=0, atol=float(scale) * 1e3 * torch.finfo(want.dtype).eps)


def _check_against_float64(x, index, k, count, total):
    """Counts exact; sums within the recursive-summation bound (count - 1) * eps * sum |x| of the output dtype."""
    want_count, want_total = reference.code_stats(x.double(), index, k)
    _, abs_total = reference.code_stats(x.double().abs(), index, k)
    assert count.dtype == total.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    assert count.shape == (k,) and total.shape == (k, x.shape[1])
    assert torch.equal(count.double(), want_count)
    eps = torch.finfo(total.dtype).eps
    bound = (want_count.clamp_min(1)[:, None]) * eps * abs_total + torch.finfo(total.dtype).tiny
    assert bool(((total.double() - want_total).abs() <= bound).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n, d, k", [(1, 1, 1), (7, 3, 5), (257, 17, 31), (1000, 64, 512), (4099, 5, 3)])
def test_matches_reference(kernel_backend, device, n, d, k, dtype):
    x, index = _inputs(n, d, k, dtype, device)
    assert backend.choose("code_stats", x.device)[0] == kernel_backend
    count, total = patchvq.code_stats(x, index, k)
    _check_against_float64(x.cpu(), index.cpu(), k, count.cpu(), total.cpu())


def test_empty_rows_give_zeros(kernel_backend, device):
    x = torch.empty(0, 6, device=device)
    count, total = patchvq.code_stats(x, torch.empty(0, dtype=torch.int64, device=device), 4)
    assert torch.equal(count.cpu(), torch.zeros(4)) and torch.equal(total.cpu(), torch.zeros(4, 6))


def test_single_code_sums_every_unmasked_row(kernel_backend, device):
    x, index = _inputs(300, 9, 1, torch.float64, device, masked=0.3)
    count, total = patchvq.code_stats(x, index, 1)
    keep = index >= 0
    assert count.item() == keep.sum().item()
    torch.testing.assert_close(total[0], x[keep].sum(0), rtol=0, atol=300 * torch.finfo(torch.float64).eps * 30)


def test_all_rows_masked(kernel_backend, device):
    x = torch.randn(50, 4, device=device)
    count, total = patchvq.code_stats(x, torch.full((50,), -1, device=device), 3)
    assert not count.any() and not total.any()


def test_non_contiguous_x(kernel_backend, device):
    base, index = _inputs(120, 22, 7, torch.float32, device)
    x = base[:, ::2]
    assert not x.is_contiguous()
    count, total = patchvq.code_stats(x, index, 7)
    want_count, want_total = patchvq.code_stats(x.contiguous(), index, 7)
    assert torch.equal(count, want_count)
    assert_same_sums(total, want_total, device)
    transposed = base.t().contiguous().t()
    assert_same_sums(patchvq.code_stats(transposed, index, 7)[1], patchvq.code_stats(base, index, 7)[1], device)


def test_half_precision_input_accumulates_in_float32(kernel_backend, device):
    x, index = _inputs(333, 8, 6, torch.bfloat16, device)
    count, total = patchvq.code_stats(x, index, 6)
    assert total.dtype == torch.float32
    _check_against_float64(x.float().cpu(), index.cpu(), 6, count.cpu(), total.cpu())


def test_same_result_for_any_thread_count(kernel_backend, device):
    if device.type != "cpu":
        pytest.skip("CPU threads only; GPU sums are reproducible under deterministic algorithms, tested below")
    x, index = _inputs(20000, 33, 37, torch.float32, device)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = patchvq.code_stats(x, index, 37)
        torch.set_num_threads(max(2, threads))
        many = patchvq.code_stats(x, index, 37)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], many[0]) and torch.equal(one[1], many[1])


def test_deterministic_algorithms_make_sums_reproducible(kernel_backend, device):
    assert not code_stats_op.needs_reproducible_sums(torch.device("cpu"))
    x, index = _inputs(20000, 33, 37, torch.float32, device)
    was = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert code_stats_op.needs_reproducible_sums(torch.device("cuda")) is True
        runs = [patchvq.code_stats(x, index, 37) for _ in range(3)]
    finally:
        torch.use_deterministic_algorithms(was)
    assert not code_stats_op.needs_reproducible_sums(torch.device("cuda")) or was
    for count, total in runs[1:]:
        assert torch.equal(count, runs[0][0]) and torch.equal(total, runs[0][1])
    _check_against_float64(x.cpu(), index.cpu(), 37, runs[0][0].cpu(), runs[0][1].cpu())


def test_reproducible_sums_take_the_reference_unless_a_fast_backend_is_forced(monkeypatch):
    # The rule as a GPU meets it, on CPU tensors: sums that must be reproducible come from the reference.
    monkeypatch.setattr(code_stats_op, "needs_reproducible_sums", lambda device: True)
    x, index = _inputs(500, 7, 9, torch.float32, torch.device("cpu"))
    calls = []
    monkeypatch.setattr(backend, "reference", lambda op: lambda *a: calls.append(op) or reference.code_stats(*a))
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    count, total = patchvq.code_stats(x, index, 9)
    assert calls == ["code_stats"]
    _check_against_float64(x, index, 9, count, total)
    monkeypatch.setenv(backend.ENV_VAR, "native")
    with pytest.raises(RuntimeError, match="not deterministic"):
        patchvq.code_stats(x, index, 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(kernel_backend, device, dtype):
    for n, d, k in [(0, 3, 2), (11, 4, 3), (64, 16, 9)]:
        x, index = _inputs(n, d, k, dtype, device)
        torch.library.opcheck(torch.ops.patchvq.code_stats.default, (x, index, k))


def test_index_out_of_range_is_an_error(kernel_backend, device):
    x = torch.randn(10, 3, device=device)
    index = torch.zeros(10, dtype=torch.int64, device=device)
    index[6] = 4
    raises_value_error(device, lambda: patchvq.code_stats(x, index, 4), "num_codes")


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda dev: (torch.randn(5, device=dev), torch.zeros(5, dtype=torch.int64, device=dev), 3), ValueError, "x"),
        (lambda dev: (torch.ones(5, 2, dtype=torch.int64, device=dev), torch.zeros(5, dtype=torch.int64, device=dev), 3),
         TypeError, "floating"),
        (lambda dev: (torch.randn(5, 2, device=dev), torch.zeros(5, dtype=torch.int32, device=dev), 3), TypeError,
         "int64"),
        (lambda dev: (torch.randn(5, 2, device=dev), torch.zeros(4, dtype=torch.int64, device=dev), 3), ValueError,
         "index"),
        (lambda dev: (torch.randn(5, 2, device=dev), torch.zeros(5, dtype=torch.int64, device=dev), 0), ValueError,
         "num_codes"),
    ],
)
def test_bad_input_names_the_argument(kernel_backend, device, make, error, words):
    with pytest.raises(error, match=words):
        patchvq.code_stats(*make(device))


def test_native_kernel_checks_its_own_arguments(device):
    """Called directly (private patchvq_native::, no Python validation), the CPU kernel raises the
    same error types as the public op, naming the argument."""
    if device.type != "cpu":
        pytest.skip("checks the CPU kernel; on CUDA the range check is a device-side assert (test_gpu_kernels.py)")
    try:
        op = backend.kernel("native", "code_stats", device)
    except backend.BackendUnavailable as exc:
        pytest.skip(f"native kernels unavailable: {exc}")
    x = torch.randn(5, 2)
    with pytest.raises(TypeError, match="index must be an int64"):
        op(x, torch.zeros(5, dtype=torch.int32), 3)
    with pytest.raises(ValueError, match=r"index must be \[N\]"):
        op(x, torch.zeros(4, dtype=torch.int64), 3)
    with pytest.raises(ValueError, match="num_codes must be a positive"):
        op(x, torch.zeros(5, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"index\[2\] = 7 is out of range for num_codes=3"):
        op(x, torch.tensor([0, 1, 7, 9, -1]), 3)
