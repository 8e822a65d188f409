"""patchvq.topk_code, patchvq.code_logsumexp and patchvq.code_prob_sum on every backend: against
the reference (odd shapes, N = 0, K = 1, groups, non-contiguous, ties, large values, half inputs), the Philox noise against
known answers, sampled frequencies against softmax(logit / T) (chi-square at a fixed seed),
gradients (float64 gradcheck), opcheck, bad input, and the extra memory of a large call.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import triton_missing
from scipy import stats

import patchvq
from patchvq.reference import code_softmax as ref

BACKENDS = ["reference", "native", "triton"]


@pytest.fixture(params=BACKENDS)
def backend_name(request, monkeypatch, device) -> str:
    """Each backend forced in turn (Triton interpreted on CPU tensors)."""
    if request.param == "triton":
        if triton_missing():
            pytest.skip(triton_missing())
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton runs CPU tensors only under TRITON_INTERPRET=1")
    monkeypatch.setenv("PATCHVQ_BACKEND", request.param)
    return request.param


def scores64(x, cb, metric, temperature=0.0, seed=0, offset=0):
    """float64 scores [N, K] with the reference's noise: the oracle the picks are ranked by."""
    s = ref.logits(x.double(), cb.double(), metric)
    if temperature > 0:
        s = s / temperature + ref.gumbel(torch.arange(x.shape[0], device=x.device), cb.shape[0], seed, offset,
                                         torch.float64)
    return s


def tolerance(x, s):
    """Rounding allowance of a score: a few ulps of the input dtype's accumulation times the largest
    magnitude involved (logits, the squared norms they come from, the noise)."""
    eps = torch.finfo(ref.accumulate_dtype(x.dtype)).eps
    return 256 * eps * (1.0 + float(s.abs().max()) + float(x.double().pow(2).sum(1).max()) if x.numel() else 1.0)


def assert_ranked(index, s, tol):
    """index [N, k] names distinct codes whose scores are the k best of s [N, K] up to tol, best first."""
    n, k = index.shape
    assert index.dtype == torch.int64 and (index >= 0).all() and (index < s.shape[1]).all()
    if n == 0:
        return
    assert all(len(set(row.tolist())) == k for row in index)
    best = s.sort(-1, descending=True).values[:, :k]
    picked = s.gather(1, index)
    assert (picked >= best - tol).all(), (picked - best).min()


def inputs(n, k, d, dtype=torch.float32, scale=1.0, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    cb = (torch.randn(k, d, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
    return x, cb


def test_philox_matches_the_random123_known_answers():
    zero = [torch.zeros(1, dtype=torch.int64)] * 4
    ones = [torch.full((1,), 0xFFFFFFFF, dtype=torch.int64)] * 4
    assert [int(w) for w in ref.philox(zero, 0)] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert [int(w) for w in ref.philox(ones, 2**64 - 1)] == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]


SHAPES = [(1, 1, 1), (7, 11, 5), (33, 70, 17), (0, 9, 4), (5, 1, 3), pytest.param(40, 130, 64, marks=pytest.mark.slow)]


@pytest.mark.parametrize("metric", ["l2", "dot"])
@pytest.mark.parametrize("n,k,d", SHAPES)
def test_code_logsumexp_matches_the_reference(backend_name, device, metric, n, k, d):
    x, cb = inputs(n, k, d, device=device, seed=n + k)
    for scale in (1.0, 0.3, -2.0):
        got = patchvq.code_logsumexp(x, cb, metric, scale)
        want = ref.code_logsumexp(x.double(), cb.double(), metric, scale)
        assert got.dtype == torch.float32 and got.shape == (n,)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=tolerance(x, want))


def prob_sum_tolerance(x, cb, metric, scale, group):
    """A group's sum of probabilities is off by at most group times the rounding of one row's
    scale * logit - lse (a relative error of each probability, which is <= 1)."""
    return group * (1.0 + abs(scale)) * tolerance(x, ref.logits(x.double(), cb.double(), metric))


@pytest.mark.parametrize("metric", ["l2", "dot"])
@pytest.mark.parametrize("n,k,d", SHAPES)
def test_code_prob_sum_matches_the_reference(backend_name, device, metric, n, k, d):
    x, cb = inputs(n, k, d, device=device, seed=n + 2 * k)
    for group in sorted({1, n}) if n else (1, 3):
        for scale in (1.0, 0.3, -2.0):
            got = patchvq.code_prob_sum(x, cb, group, metric, scale)
            want = ref.code_prob_sum(x.double(), cb.double(), group, metric, scale)
            assert got.dtype == torch.float32 and got.shape == (n // group, k)
            torch.testing.assert_close(got.double(), want, rtol=0,
                                       atol=prob_sum_tolerance(x, cb, metric, scale, group))
            # Each row's softmax sums to 1, so each group's row sums to group.
            torch.testing.assert_close(want.sum(-1), torch.full_like(want[:, 0], group))


def test_code_prob_sum_groups_consecutive_rows(backend_name, device):
    """Group g sums rows [g * group, (g + 1) * group): the sum of the per-row (group 1) outputs."""
    x, cb = inputs(42, 37, 6, device=device, seed=4)
    rows = patchvq.code_prob_sum(x, cb, 1, "l2", 2.0)
    for group in (2, 7, 42):
        got = patchvq.code_prob_sum(x, cb, group, "l2", 2.0)
        torch.testing.assert_close(got, rows.reshape(-1, group, 37).sum(1), rtol=1e-5, atol=1e-5)


def test_code_prob_sum_does_not_depend_on_the_thread_count(backend_name, device):
    """Each group is summed in row order by one thread: the same bits with 1 and 2 threads, for
    many groups and for one group of all rows (where threads must not share the output row)."""
    if backend_name == "triton" and device.type == "cpu":
        pytest.skip("the Triton interpreter runs a launch on one thread whatever torch's setting, and takes minutes here")
    x, cb = inputs(1200, 300, 9, device=device, seed=8)
    threads = torch.get_num_threads()
    try:
        for group in (4, 1200):
            torch.set_num_threads(1)
            one = patchvq.code_prob_sum(x, cb, group, "l2", 1.5)
            torch.set_num_threads(2)
            two = patchvq.code_prob_sum(x, cb, group, "l2", 1.5)
            assert torch.equal(one, two), (group, (one - two).abs().max())
    finally:
        torch.set_num_threads(threads)
    want = ref.code_prob_sum(x.double(), cb.double(), 1200, "l2", 1.5)
    torch.testing.assert_close(two.double(), want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("metric", ["l2", "dot"])
@pytest.mark.parametrize("n,k,d", SHAPES)
def test_topk_code_ranks_the_codes(backend_name, device, metric, n, k, d):
    x, cb = inputs(n, k, d, device=device, seed=n * k)
    # k = K in full only for small K: Triton's top-k makes k passes, slow under the interpreter.
    for topk in sorted({1, min(3, k), k if k <= 11 else 1}):
        for temperature, seed, offset in [(0.0, 0, 0), (0.7, 5, 0), (2.5, 2**40 + 3, 2**33 + 1)]:
            index = patchvq.topk_code(x, cb, topk, metric, temperature=temperature, seed=seed, offset=offset)
            s = scores64(x, cb, metric, temperature, seed, offset)
            assert index.shape == (n, topk)
            assert_ranked(index, s, tolerance(x, s))


@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_topk_code_is_exact_on_integer_inputs_with_ties(backend_name, device, metric):
    """Small integers score exactly in every backend, so the codes equal the reference's, ties to
    the smallest index (duplicated codes)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (29, 6), generator=g).float().to(device)
    cb = torch.randint(-3, 4, (23, 6), generator=g).float()
    cb = torch.cat([cb, cb[:7]]).to(device)  # codes 23..29 tie with 0..6
    for k in (1, 4):
        for temperature in (0.0, 1.5):
            got = patchvq.topk_code(x, cb, k, metric, temperature=temperature, seed=11, offset=2)
            assert torch.equal(got, ref.topk_code(x, cb, k, metric, temperature, 11, 2))


def test_non_contiguous_large_and_half_inputs(backend_name, device):
    x, cb = inputs(50, 40, 24, device=device, scale=300.0)
    xt, cbt = x.t().contiguous().t(), cb[:, ::1].t().contiguous().t()
    assert not xt.is_contiguous()
    s = scores64(x, cb, "l2", 3.0, 9, 1)
    assert_ranked(patchvq.topk_code(xt, cbt, 2, "l2", temperature=3.0, seed=9, offset=1), s, tolerance(x, s))
    want = ref.code_logsumexp(x.double(), cb.double(), "l2", 0.5)
    torch.testing.assert_close(patchvq.code_logsumexp(xt, cbt, "l2", 0.5).double(), want, rtol=0,
                               atol=tolerance(x, want))
    want = ref.code_prob_sum(x.double(), cb.double(), 5, "l2", 0.05)
    got = patchvq.code_prob_sum(xt, cbt, 5, "l2", 0.05)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=prob_sum_tolerance(x, cb, "l2", 0.05, 5))
    xh, cbh = x.half() / 300, cb.half() / 300
    want = ref.code_prob_sum(xh.double(), cbh.double(), 10, "dot", 3.0)
    got = patchvq.code_prob_sum(xh, cbh, 10, "dot", 3.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=prob_sum_tolerance(xh.float(), cbh, "dot", 3.0, 10))
    want = ref.code_logsumexp(xh.double(), cbh.double(), "dot")
    got = patchvq.code_logsumexp(xh, cbh, "dot")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tolerance(xh.float(), want))


def sample_counts(backend_name, n_rows, temperature, seed):
    """Codes sampled for n_rows copies of one row against 6 codes (each row its own noise)."""
    x = torch.tensor([[0.3, -0.2, 0.5]]).expand(n_rows, 3)
    cb = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.5], [1.0, 1.0, 1.0], [-1.0, 0.0, 0.2], [0.2, -0.4, 0.9],
                       [2.0, -1.0, 0.0]])
    index = patchvq.topk_code(x, cb, 1, "l2", temperature=temperature, seed=seed)[:, 0]
    probs = (ref.logits(x[:1].double(), cb.double(), "l2")[0] / temperature).softmax(-1)
    return torch.bincount(index, minlength=6).double(), probs


@pytest.mark.parametrize("temperature", [0.4, 1.0])
def test_sampled_frequencies_match_the_softmax(backend_name, temperature):
    n_rows = 1500 if backend_name == "triton" else 20000
    counts, probs = sample_counts(backend_name, n_rows, temperature, seed=1234)
    assert stats.chisquare(counts.numpy(), (probs * n_rows).numpy()).pvalue > 1e-3
    # The test has power: the same counts are far from the softmax at another temperature.
    _, wrong = sample_counts(backend_name, 1, temperature * 2, seed=1234)
    assert stats.chisquare(counts.numpy(), (wrong * n_rows).numpy()).pvalue < 1e-6


def test_sampling_is_a_function_of_seed_and_offset(backend_name, device):
    x, cb = inputs(64, 50, 8, device=device)
    a = patchvq.topk_code(x, cb, 1, temperature=5.0, seed=7, offset=0)
    assert torch.equal(a, patchvq.topk_code(x, cb, 1, temperature=5.0, seed=7, offset=0))
    assert not torch.equal(a, patchvq.topk_code(x, cb, 1, temperature=5.0, seed=8, offset=0))
    assert not torch.equal(a, patchvq.topk_code(x, cb, 1, temperature=5.0, seed=7, offset=1))


@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_code_logsumexp_gradcheck(backend_name, device, metric):
    x, cb = inputs(9, 13, 5, dtype=torch.float64, device=device)
    x.requires_grad_()
    cb.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: patchvq.code_logsumexp(a, b, metric, 0.7), (x, cb))


@pytest.mark.parametrize("metric", ["l2", "dot"])
def test_code_prob_sum_gradcheck(backend_name, device, metric):
    x, cb = inputs(12, 13, 5, dtype=torch.float64, device=device)
    x.requires_grad_()
    cb.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: patchvq.code_prob_sum(a, b, 3, metric, 0.7), (x, cb))


def test_code_prob_sum_gradient_matches_autograd_of_the_reference(backend_name, device):
    if backend_name == "triton":
        pytest.skip("the backward is one PyTorch function for every backend; the interpreter adds only time")
    x, cb = inputs(300, 1100, 7, device=device)  # more rows than one backward block
    xs, cbs = x.t().contiguous().t().requires_grad_(), cb.clone().requires_grad_()
    weight = torch.randn(100, 1100, dtype=torch.float32, device=device)
    (patchvq.code_prob_sum(xs, cbs, 3, "l2", 1.3) * weight).sum().backward()
    xr, cbr = x.clone().requires_grad_(), cb.clone().requires_grad_()
    prob = (1.3 * ref.logits(xr, cbr, "l2")).softmax(-1)
    (prob.reshape(100, 3, 1100).sum(1) * weight).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cbs.grad, cbr.grad, rtol=1e-4, atol=1e-4)


def test_code_logsumexp_gradient_matches_autograd_of_the_reference(backend_name, device):
    if backend_name == "triton":
        pytest.skip("the backward is one PyTorch function for every backend; the interpreter adds only time")
    x, cb = inputs(300, 1100, 7, device=device)  # more rows than one backward block
    xs, cbs = x.t().contiguous().t().requires_grad_(), cb.clone().requires_grad_()
    weight = torch.randn(300, dtype=torch.float32, device=device)
    (patchvq.code_logsumexp(xs, cbs, "l2", 1.3) * weight).sum().backward()
    xr, cbr = x.clone().requires_grad_(), cb.clone().requires_grad_()
    (torch.logsumexp(1.3 * ref.logits(xr, cbr, "l2"), -1) * weight).sum().backward()
    torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cbs.grad, cbr.grad, rtol=1e-4, atol=1e-4)


def test_opcheck(backend_name, device):
    x, cb = inputs(21, 6, 5, device=device)
    torch.library.opcheck(torch.ops.patchvq.topk_code.default, (x, cb, 2, "l2", 0.5, 3, 1))
    torch.library.opcheck(torch.ops.patchvq.code_logsumexp.default, (x, cb, "dot", 0.5))
    torch.library.opcheck(torch.ops.patchvq.code_logsumexp.default,
                          (x.double().requires_grad_(), cb.double().requires_grad_(), "l2", 1.0))
    torch.library.opcheck(torch.ops.patchvq.code_prob_sum.default, (x, cb, 7, "dot", 0.5))
    torch.library.opcheck(torch.ops.patchvq.code_prob_sum.default,
                          (x.double().requires_grad_(), cb.double().requires_grad_(), 3, "l2", 1.0))


@pytest.mark.parametrize("call,error,match", [
    (lambda x, cb: patchvq.topk_code(x, cb, 0), ValueError, "k must be"),
    (lambda x, cb: patchvq.topk_code(x, cb, 6), ValueError, r"k must be an int in \[1, K=5\]"),
    (lambda x, cb: patchvq.topk_code(x, cb, 1, temperature=-1.0), ValueError, "temperature must be >= 0"),
    (lambda x, cb: patchvq.topk_code(x, cb, 1, temperature=float("nan")), ValueError, "temperature must be finite"),
    (lambda x, cb: patchvq.topk_code(x, cb, 1, seed=-1), ValueError, "seed must be in"),
    (lambda x, cb: patchvq.topk_code(x, cb, 1, offset=-1), ValueError, "offset must be in"),
    (lambda x, cb: patchvq.topk_code(x, cb, 1, "cosine"), ValueError, "metric must be one of"),
    (lambda x, cb: patchvq.code_logsumexp(x, cb, "l2", float("inf")), ValueError, "scale must be finite"),
    (lambda x, cb: patchvq.code_logsumexp(x[:, :3], cb), ValueError, "x has D=3 but codebook has D=4"),
    (lambda x, cb: patchvq.code_logsumexp(x.long(), cb), TypeError, "x must be a floating-point tensor"),
    (lambda x, cb: patchvq.topk_code(x, cb[:0]), ValueError, "codebook is empty"),
    (lambda x, cb: patchvq.code_logsumexp(x[0], cb), ValueError, "x must be 2-D"),
    (lambda x, cb: patchvq.code_prob_sum(x, cb, 0), ValueError, "group must be an int >= 1"),
    (lambda x, cb: patchvq.code_prob_sum(x, cb, 2), ValueError, "group=2 does not divide the N=3 rows"),
    (lambda x, cb: patchvq.code_prob_sum(x, cb, 1, "l2", float("nan")), ValueError, "scale must be finite"),
    (lambda x, cb: patchvq.code_prob_sum(x, cb.t(), 1), ValueError, "x has D=4 but codebook has D=5"),
])
def test_bad_input_is_named(backend_name, call, error, match):
    x, cb = inputs(3, 5, 4)
    with pytest.raises(error, match=match):
        call(x, cb)


def test_nan_input_is_an_error(backend_name):
    x, cb = inputs(3, 5, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        patchvq.topk_code(x, cb, 1, temperature=1.0)
    cb[0, 0] = float("inf")
    with pytest.raises(ValueError, match="codebook contains NaN or Inf"):
        patchvq.code_logsumexp(x.nan_to_num(), cb)
    with pytest.raises(ValueError, match="x contains NaN or Inf"):
        patchvq.code_prob_sum(x, cb.nan_to_num(), 3)


_MEMORY_CHILD = r"""
import json, sys, torch, patchvq
sys.path.insert(0, "benchmarks")
from peak_memory import reset_peak, status_kib
torch.set_num_threads(1)
n, k = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(0)
x, cb = torch.randn(n, 4, generator=g), torch.randn(k, 4, generator=g)
tiny = (x[:8].clone().requires_grad_(), cb[:8].clone().requires_grad_())
patchvq.topk_code(*tiny, 1, temperature=1.0); patchvq.code_logsumexp(*tiny).sum().backward()
patchvq.code_prob_sum(*tiny, 2).sum().backward()
xg, cbg = x.clone().requires_grad_(), cb.clone().requires_grad_()
weight = torch.randn(n // 256, k, generator=g)
weight_one = torch.randn(1, k, generator=g)
extra = {}
for name, call in [("sample", lambda: patchvq.topk_code(x, cb, 1, temperature=1.0, seed=1)),
                   ("topk", lambda: patchvq.topk_code(x, cb, 4)),
                   ("logsumexp_train", lambda: patchvq.code_logsumexp(xg, cbg).sum().backward()),
                   ("prob_sum_train", lambda: (patchvq.code_prob_sum(xg, cbg, 256) * weight).sum().backward()),
                   ("one_group_train", lambda: (patchvq.code_prob_sum(xg, cbg, n) * weight_one).sum().backward())]:
    before = status_kib("VmRSS")
    assert reset_peak(), "cannot reset the peak resident set size here"
    call()
    extra[name] = (status_kib("VmHWM") - before) * 1024
print(json.dumps(extra))
"""


@pytest.mark.slow  # three subprocesses at N = 32768, K = 2048 on one thread
def test_no_n_by_k_buffer_is_allocated():
    """Extra peak resident memory of sampling, top-k, and the forward and backward of the
    log-sum-exp and of the group sums (256 rows a group: a [N / 256, K] output; all N rows one
    group, whose backward must still go in blocks of rows), on the default
    backend, is a small fraction of one N x K float32 buffer (256 MiB here)."""
    n, k = 32768, 2048
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 16), OMP_NUM_THREADS="1")
    env.pop("PATCHVQ_BACKEND", None)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(n), str(k)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    if done.returncode and "cannot reset the peak" in done.stderr:
        pytest.skip("/proc/self/clear_refs is not writable here")
    assert done.returncode == 0, done.stderr[-3000:]
    extra = json.loads(done.stdout.strip().splitlines()[-1])
    for name, used in extra.items():
        assert used < n * k * 4 / 16, (name, used / 2**20)


@pytest.mark.parametrize("args,error,match", [
    ((0, "l2", 0.0, 0, 0), ValueError, r"k must be in \[1, K=5\]"),
    ((1, "cosine", 0.0, 0, 0), ValueError, "metric must be"),
    ((1, "l2", -0.5, 0, 0), ValueError, "temperature must be finite and >= 0"),
    ((1, "l2", 0.0, -3, 0), ValueError, "seed and offset must be >= 0"),
])
def test_the_native_kernel_checks_its_arguments_itself(args, error, match):
    """torch.ops reaches the compiled kernel without the Python checks: it checks on its own."""
    from patchvq.ops import backend

    try:
        topk = backend.kernel("native", "topk_code")
    except backend.BackendUnavailable as exc:
        pytest.skip(str(exc))
    x, cb = inputs(3, 5, 4)
    with pytest.raises(error, match=match):
        topk(x, cb, *args)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        backend.kernel("native", "code_logsumexp")(x.long(), cb, "l2", 1.0)
    with pytest.raises(ValueError, match="scale must be finite"):
        backend.kernel("native", "code_logsumexp")(x, cb, "l2", float("nan"))
    with pytest.raises(ValueError, match="group=2 does not divide the N=3 rows of x"):
        backend.kernel("native", "code_prob_sum")(x, cb, 2, "l2", 1.0)
    with pytest.raises(ValueError, match="group must be an int >= 1"):
        backend.kernel("native", "code_prob_sum")(x, cb, 0, "l2", 1.0)
