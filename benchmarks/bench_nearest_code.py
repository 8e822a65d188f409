"""nearest_code against the searches users write and against faiss, with the matmul roofline.

Every case at one thread count (conftest.THREADS) in one run; `python benchmarks/ratios.py
result.json` turns a --benchmark-json file into the ratio table of benchmarks/README.md.
"""

import time

import pytest
import torch
from conftest import THREADS, blas_kernels, faiss_or_skip, measure, shape_id

import patchvq
from patchvq.ops import native

FULL_SHAPES = [(n, d, k) for n in (16384, 65536) for d in (64, 256) for k in (512, 4096)]
QUICK_SHAPE = (16384, 64, 512)
SHAPES = [pytest.param(*s, id=shape_id(*s)) for s in FULL_SHAPES] + [
    pytest.param(*QUICK_SHAPE, id=shape_id(*QUICK_SHAPE, quick=True))
]
# Rows per addmm in the chunked composition: the reference's block size.
CHUNK_ROWS = 4096
ROOFLINE_SIDES = [pytest.param(4096, id="full"), pytest.param(2048, id="quick")]


def inputs(n: int, d: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)


def cdist_argmin(x, codebook):
    return torch.cdist(x, codebook).argmin(1)


def addmm_argmin(x, codebook):
    return torch.addmm(codebook.pow(2).sum(1), x, codebook.t(), alpha=-2.0).argmin(1)


def chunked_search(codebook: torch.Tensor, n: int):
    """addmm of CHUNK_ROWS-row blocks into one reused buffer, torch.min into preallocated outputs."""
    norms = codebook.pow(2).sum(1)
    codes_t = codebook.t()
    scores = torch.empty(CHUNK_ROWS, codebook.shape[0])
    values = torch.empty(n)
    index = torch.empty(n, dtype=torch.int64)

    def search(x):
        for start in range(0, n, CHUNK_ROWS):
            rows = x[start : start + CHUNK_ROWS]
            block = scores[: rows.shape[0]]
            torch.addmm(norms, rows, codes_t, alpha=-2.0, out=block)
            torch.min(block, 1, out=(values[start : start + rows.shape[0]], index[start : start + rows.shape[0]]))
        return index

    return search


# faiss's exhaustive search runs BLAS on blocks of (query_bs x database_bs); its defaults
# (4096 x 1024) are far from its best here, so each case picks the fastest of these.
FAISS_BLOCKS = [(4096, 1024), (4096, 4096), (16384, 2048), (16384, 4096), (8192, 8192)]


def tune_faiss_blocks(faiss, index, x_np, trials: int = 2) -> tuple[int, int]:
    """Set faiss's BLAS block sizes to the fastest of FAISS_BLOCKS on the first 16384 rows."""
    sample = x_np[:16384]
    timings = {}
    for query_bs, database_bs in FAISS_BLOCKS:
        faiss.cvar.distance_compute_blas_query_bs = query_bs
        faiss.cvar.distance_compute_blas_database_bs = database_bs
        best = float("inf")
        for _ in range(trials):
            start = time.perf_counter()
            index.search(sample, 1)
            best = min(best, time.perf_counter() - start)
        timings[(query_bs, database_bs)] = best
    chosen = min(timings, key=timings.get)
    faiss.cvar.distance_compute_blas_query_bs, faiss.cvar.distance_compute_blas_database_bs = chosen
    return chosen


METHODS = ["patchvq", "patchvq_fp32", "cdist_argmin", "addmm_argmin", "chunked_addmm_min", "faiss_flat_l2"]


def searcher(method: str, x: torch.Tensor, codebook: torch.Tensor):
    """A no-argument function running `method` on x and codebook, returning int64 indices.
    Setup a user does once per codebook (faiss's index, the chunked buffers) happens here."""
    if method == "patchvq":
        return lambda: patchvq.nearest_code(x, codebook)[0]
    if method == "patchvq_fp32":
        # The float32 kernel alone: what patchvq.nearest_code runs where the bfloat16 search
        # is not built or does not pay, and the answer the bfloat16 search reproduces.
        kernel = native.cpu_extension().float32_kernel_nearest_code
        return lambda: kernel(x, codebook, "l2")[0]
    if method == "cdist_argmin":
        return lambda: cdist_argmin(x, codebook)
    if method == "addmm_argmin":
        return lambda: addmm_argmin(x, codebook)
    if method == "chunked_addmm_min":
        search = chunked_search(codebook, x.shape[0])
        return lambda: search(x)
    if method == "faiss_flat_l2":
        faiss = faiss_or_skip()
        index = faiss.IndexFlatL2(codebook.shape[1])
        index.add(codebook.numpy())
        x_np = x.numpy()
        tune_faiss_blocks(faiss, index, x_np)
        return lambda: torch.from_numpy(index.search(x_np, 1)[1][:, 0])
    raise ValueError(f"unknown method {method!r}")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("n", "d", "k"), SHAPES)
def test_nearest_code(benchmark, method, n, d, k):
    x, codebook = inputs(n, d, k)
    fn = searcher(method, x, codebook)
    extra = {}
    if method == "faiss_flat_l2":
        import faiss

        extra["faiss_blocks"] = [
            faiss.cvar.distance_compute_blas_query_bs,
            faiss.cvar.distance_compute_blas_database_bs,
        ]
        extra["blas_kernels"] = blas_kernels()
    found = measure(
        benchmark, fn, flops=2.0 * n * k * d, group=shape_id(n, d, k), method=method, n=n, d=d, k=k, **extra
    )
    expected = patchvq.nearest_code(x[:512], codebook)[0]
    assert (found[:512] == expected).float().mean() > 0.99, "the method disagrees with patchvq on most rows"


# Rounds of the interleaved comparison; its roofline matmul side (quick case: 2048).
INTERLEAVED_ROUNDS = 5
INTERLEAVED_MATMUL_SIDE = 3072


@pytest.mark.parametrize(("n", "d", "k"), SHAPES)
def test_interleaved(benchmark, n, d, k):
    """Every method and a roofline matmul in turn, round after round, so a change in the machine's
    load hits them alike (the per-method tests run minutes apart). The per-method minimum
    times land in extra_info["min_seconds"]; benchmarks/ratios.py builds the table from them."""
    x, codebook = inputs(n, d, k)
    functions = {}
    for method in METHODS:
        try:
            functions[method] = searcher(method, x, codebook)
        except pytest.skip.Exception:
            continue
    side = 2048 if (n, d, k) == QUICK_SHAPE else INTERLEAVED_MATMUL_SIDE
    g = torch.Generator().manual_seed(1)
    a, b, product = torch.randn(side, side, generator=g), torch.randn(side, side, generator=g), torch.empty(side, side)
    functions["matmul"] = lambda: torch.mm(a, b, out=product)
    patchvq.nearest_code(x, codebook)
    search_stats = native.cpu_extension().last_search_stats()
    seconds = {name: [] for name in functions}

    def one_round():
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)

    one_round()
    for times in seconds.values():
        times.clear()
    benchmark.group = "interleaved"
    benchmark.pedantic(one_round, rounds=INTERLEAVED_ROUNDS, iterations=1)
    benchmark.extra_info.update(
        interleaved=True,
        n=n,
        d=d,
        k=k,
        flops=2.0 * n * k * d,
        matmul_flops=2.0 * side**3,
        min_seconds={name: min(times) for name, times in seconds.items()},
        threads=THREADS,
        bf16_rows=search_stats["bf16_rows"],
        fallback_rows=search_stats["fallback_rows"],
    )


@pytest.mark.parametrize("side", ROOFLINE_SIDES)
def test_matmul_roofline(benchmark, side):
    """torch's float32 matmul rate on a large square product: this machine's float32 limit."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(side, side, generator=g), torch.randn(side, side, generator=g)
    out = torch.empty(side, side)
    measure(benchmark, lambda: torch.mm(a, b, out=out), flops=2.0 * side**3, group="roofline", method="matmul")
