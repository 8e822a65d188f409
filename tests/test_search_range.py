"""nearest_code and patch_assign on inputs at the edges of the floating-point range, and with a
large common offset, on every backend: the right index (or within the documented rounding
bound of it), never an overflow tie."""

import math

import pytest
import torch
from search_oracle import assert_nearest, exact_distances

import patchvq
from patchvq import reference


def exact_argmin(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    """The exact nearest code, from differences computed in float64 after a power-of-two scaling
    that keeps every value of x and the codebook below 1 (so 1e200 inputs do not overflow)."""
    x, codebook = x.cpu().double(), codebook.cpu().double()
    largest = max(float(x.abs().max()), float(codebook.abs().max()), 1e-300)
    scale = math.ldexp(1.0, -math.frexp(largest)[1])
    return exact_distances(x * scale, codebook * scale, metric).argmin(1)


def overflowing_distance(x, codebook, index) -> torch.Tensor:
    """The float32 rounding of the exact squared distance to codebook[index] (inf beyond range)."""
    diff = x.cpu().double() - codebook.cpu().double()[index.cpu()]
    return diff.pow(2).sum(1).float()


@pytest.fixture(params=["op", "reference"])
def search(request, kernel_backend):
    """patchvq.nearest_code on the backend under test, or the reference itself."""
    if request.param == "reference":
        if kernel_backend != "native":
            pytest.skip("the reference runs once")
        return reference.nearest_code
    return patchvq.nearest_code


def test_large_magnitudes_pick_the_right_code(search, device):
    x = torch.tensor([[1e30, 0.0]], device=device)
    codebook = torch.tensor([[0.0, 1e30], [1e30, 0.0]], device=device)
    index, distance = search(x, codebook)
    assert index.tolist() == [1] and distance.tolist() == [0.0]
    index, distance = search(x, codebook, "cosine")
    assert index.tolist() == [1] and distance.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("dtype", "scale"), [(torch.float32, 1e20), (torch.float32, 1e-20), (torch.float64, 1e200),
                                              (torch.float64, 1e-200), (torch.float32, 1e-40)])
def test_randn_at_extreme_scales_matches_the_exact_search(search, device, dtype, scale):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(50, 16, generator=g, dtype=torch.float64) * scale).to(dtype)
    codebook = (torch.randn(20, 16, generator=g, dtype=torch.float64) * scale).to(dtype)
    index, distance = search(x.to(device), codebook.to(device))
    expected = exact_argmin(x, codebook)
    if scale == 1e-40:  # float32 denormals: a few rows may tie after rounding; most must match
        assert (index.cpu() == expected).float().mean() > 0.8
        return
    assert torch.equal(index.cpu(), expected)
    if dtype == torch.float32:
        torch.testing.assert_close(distance.cpu(), overflowing_distance(x, codebook, index), rtol=1e-5, atol=0)
    for metric in ("cosine",):  # cosine does not depend on scale: the same as at scale 1
        cos_index, cos_distance = search(x.to(device), codebook.to(device), metric)
        unit_index, unit_distance = search((x / scale).to(device), (codebook / scale).to(device), metric)
        assert torch.equal(cos_index, unit_index)
        torch.testing.assert_close(cos_distance, unit_distance, rtol=1e-5, atol=1e-5)


def test_row_far_from_a_small_codebook(search, device):
    # Scores of these rows leave the float32 range in any frame; they are settled directly.
    g = torch.Generator().manual_seed(2)
    codebook = torch.randn(9, 4, generator=g) * 1e-20
    x = torch.cat([torch.randn(5, 4, generator=g) * 1e25, torch.randn(5, 4, generator=g) * 1e-20])
    index, _ = search(x.to(device), codebook.to(device))
    assert torch.equal(index.cpu(), exact_argmin(x, codebook))


@pytest.mark.parametrize("offset", [10.0, 1e3])
@pytest.mark.parametrize("d", [64, 256])
def test_large_common_offset_stays_within_the_float32_bound(search, kernel_backend, device, offset, d):
    g = torch.Generator().manual_seed(int(offset) + d)
    n, k = (300, 64) if kernel_backend == "native" else (20, 16)
    x = offset + torch.rand(n, d, generator=g)
    codebook = offset + torch.rand(k, d, generator=g)
    index, distance = search(x.to(device), codebook.to(device))
    assert_nearest(index, distance, x, codebook)
    assert (index.cpu() == exact_argmin(x, codebook)).float().mean() > 0.97


def test_large_offset_on_the_bfloat16_search(kernel_backend, device):
    # Shapes where the CPU's exact bfloat16 search runs (K >= 1024, D >= 32) get the same frame.
    if kernel_backend != "native":
        pytest.skip("the bfloat16 search is a CPU kernel")
    g = torch.Generator().manual_seed(5)
    x = 1e3 + torch.rand(200, 64, generator=g)
    codebook = 1e3 + torch.rand(1024, 64, generator=g)
    index, distance = patchvq.nearest_code(x.to(device), codebook.to(device))
    assert_nearest(index, distance, x, codebook)


def test_patch_assign_with_offset_and_large_values(kernel_backend, device):
    g = torch.Generator().manual_seed(7)
    for base, spread in ((1e3, 1.0), (0.0, 1e25)):
        levels = [base + spread * torch.rand(2, 8, 4, 4, generator=g), base + spread * torch.rand(2, 8, 2, 2, generator=g)]
        codebook = base + spread * torch.rand(12, 8, generator=g)
        choice = torch.randint(0, 2, (2, 2, 2), generator=g)
        _, indices, _ = patchvq.patch_assign([lv.to(device) for lv in levels], choice.to(device), codebook.to(device))
        for level, index in zip(levels, indices):
            rows = level.permute(0, 2, 3, 1).reshape(-1, 8)
            chosen = index.reshape(-1).cpu() >= 0
            expected = exact_argmin(rows, codebook)
            assert torch.equal(index.reshape(-1).cpu()[chosen], expected[chosen])
