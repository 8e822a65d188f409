"""The bfloat16 nearest_code search (float32 inputs, CPUs with AVX512-BF16) against the
float32 kernel it must reproduce bit for bit: same indices (ties included), same distances."""

import pytest
import torch

import patchvq
from patchvq.ops import native


@pytest.fixture(scope="module")
def cpu():
    """The CPU extension, or skip when this build has no bfloat16 search."""
    module = native.cpu_extension()
    if not module.build_info()["bf16_search"]:
        pytest.skip("built without AVX512-BF16 (this CPU lacks avx512_bf16): no bfloat16 search to test")
    return module


def search_both(cpu, x, codebook, metric="l2"):
    """nearest_code (bfloat16 path where it pays), its row counts, and the float32 kernel's answer."""
    index, distance = patchvq.nearest_code(x, codebook, metric=metric)
    stats = cpu.last_search_stats()
    expected_index, expected_distance = cpu.float32_kernel_nearest_code(x, codebook, metric)
    return index, distance, stats, expected_index, expected_distance


def assert_same(index, distance, expected_index, expected_distance):
    assert torch.equal(index, expected_index), f"{(index != expected_index).sum()} indices differ"
    assert torch.equal(distance, expected_distance), "distances differ"


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize(
    ("n", "d", "k"),
    [(14, 32, 1024), (97, 33, 1025), (517, 64, 1100), (300, 256, 4096), (2049, 64, 4096), (40, 129, 1031)],
)
def test_matches_float32_kernel(cpu, n, d, k, metric):
    g = torch.Generator().manual_seed(n * 7 + d * 3 + k)
    x, codebook = torch.randn(n, d, generator=g) * 3, torch.randn(k, d, generator=g) * 3
    index, distance, stats, expected_index, expected_distance = search_both(cpu, x, codebook, metric)
    assert stats["bf16_rows"] > 0, f"the bfloat16 search did not run: {stats}"
    assert stats["bf16_rows"] + stats["fallback_rows"] == n
    assert_same(index, distance, expected_index, expected_distance)


def test_strided_inputs(cpu):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(600, 96, generator=g)[:, ::2]
    codebook = torch.randn(1024, 200, generator=g)[:, :48]
    index, distance, stats, expected_index, expected_distance = search_both(cpu, x, codebook)
    assert stats["bf16_rows"] > 0
    assert_same(index, distance, expected_index, expected_distance)


def bf16_ulp_neighbours(base: torch.Tensor, copies: int, generator) -> torch.Tensor:
    """copies of base, one after the other, with random coordinates moved by one bfloat16 ulp."""
    rows = base.repeat(copies, 1)
    ulp = rows.abs().clamp_min(1e-30) * 2.0**-7
    step = torch.randint(-1, 2, rows.shape, generator=generator).float()
    return rows + step * ulp


def test_near_ties_fall_back_and_match(cpu):
    """Codes one bfloat16 ulp apart, 32 codes apart in the codebook so that they share a lane of
    the micro-kernel: bfloat16 cannot rank them, so rows re-run in float32."""
    g = torch.Generator().manual_seed(5)
    codebook = bf16_ulp_neighbours(torch.randn(32, 64, generator=g), 32, g)
    x = codebook[torch.randint(0, codebook.shape[0], (2000,), generator=g)] + 1e-3 * torch.randn(2000, 64, generator=g)
    index, distance, stats, expected_index, expected_distance = search_both(cpu, x, codebook)
    assert stats["fallback_rows"] > 0, f"no row fell back on near-ties: {stats}"
    assert_same(index, distance, expected_index, expected_distance)


@pytest.mark.parametrize(
    ("distinct", "settled_by", "least_rows"), [(350, "bf16_rows", 400), (32, "fallback_rows", 500)]
)
def test_exact_ties_keep_the_smallest_code(cpu, distinct, settled_by, least_rows):
    """Copies of `distinct` codes: copies in different lanes are re-scored in float32 and tie
    there; copies 32 apart share a lane, so their rows re-run in float32. Both keep the
    smallest code."""
    g = torch.Generator().manual_seed(6)
    base = torch.randn(distinct, 32, generator=g)
    codebook = base.repeat(-(-1024 // distinct), 1)
    x = torch.randn(500, 32, generator=g)
    index, distance, stats, expected_index, expected_distance = search_both(cpu, x, codebook)
    assert stats[settled_by] >= least_rows, stats
    assert_same(index, distance, expected_index, expected_distance)
    assert (index < distinct).all()


def test_adversarial_ranking_needs_the_bound(cpu):
    """Pairs of codes whose float32 order the bfloat16 scores reverse on many rows: only the
    rounding bound (re-scoring or falling back) keeps the float32 answer; a bound too small
    would return the bfloat16 winner on those rows and fail here."""
    g = torch.Generator().manual_seed(7)
    d = 64
    base = torch.randn(520, d, generator=g)
    codebook = torch.cat([base, base + 2e-3 * torch.randn(520, d, generator=g)])
    x = base[torch.randint(0, 520, (3000,), generator=g)] + 4e-3 * torch.randn(3000, d, generator=g)
    index, distance, stats, expected_index, expected_distance = search_both(cpu, x, codebook)
    xb, cb = x.bfloat16().double(), codebook.bfloat16().double()
    bf16_winner = (codebook.double().pow(2).sum(1) - 2 * xb @ cb.t()).argmin(1)
    reversed_rows = int((bf16_winner != expected_index).sum())
    assert reversed_rows >= 100, f"the case is not adversarial: bfloat16 reverses only {reversed_rows} rows"
    assert stats["bf16_rows"] >= 2000, f"pairs in different lanes should be re-scored, not fall back: {stats}"
    assert_same(index, distance, expected_index, expected_distance)


def test_huge_values_are_searched_in_range(cpu):
    # The search frame scales the codebook's largest value below 1: 1e18 inputs score in bfloat16.
    g = torch.Generator().manual_seed(8)
    x, codebook = torch.randn(200, 32, generator=g) * 1e18, torch.randn(1024, 32, generator=g) * 1e18
    index, distance, stats, expected_index, expected_distance = search_both(cpu, x, codebook)
    assert stats["bf16_rows"] > 150 and stats["bf16_rows"] + stats["fallback_rows"] == 200
    assert_same(index, distance, expected_index, expected_distance)


def test_rows_far_from_the_codebook_fall_back(cpu):
    # Rows 1e40 times the codebook's scale overflow float32 scores in any frame: the float32
    # kernel settles them (by direct differences), with the same result.
    g = torch.Generator().manual_seed(9)
    x, codebook = torch.randn(200, 32, generator=g) * 1e20, torch.randn(1024, 32, generator=g) * 1e-20
    index, distance, stats, expected_index, expected_distance = search_both(cpu, x, codebook)
    assert stats == {"bf16_rows": 0, "fallback_rows": 200}
    assert_same(index, distance, expected_index, expected_distance)


@pytest.mark.parametrize("where", ["x", "codebook"])
def test_non_finite_input_raises(cpu, where):
    x, codebook = torch.randn(100, 32), torch.randn(1024, 32)
    (x if where == "x" else codebook)[50, 3] = float("nan")
    with pytest.raises(ValueError, match=f"{where} contains NaN or Inf"):
        patchvq.nearest_code(x, codebook)


@pytest.mark.parametrize(
    ("dtype", "d", "k"), [(torch.float64, 64, 1024), (torch.float32, 16, 4096), (torch.float32, 64, 512)]
)
def test_not_taken_where_it_does_not_pay(cpu, dtype, d, k):
    x, codebook = torch.randn(300, d, dtype=dtype), torch.randn(k, d, dtype=dtype)
    patchvq.nearest_code(x, codebook)
    assert cpu.last_search_stats() == {"bf16_rows": 0, "fallback_rows": 0}
