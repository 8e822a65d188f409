"""Binned and streamed pixel metrics: agreement with exact mode, bounds, memory."""

import tracemalloc

import numpy as np
import pytest

from patchvq.metrics import MetricError, PixelHistogram, aupro, pixel_auroc


def blobs(rng, n, size):
    """Masks with a few rectangles each and noisy maps brighter inside them."""
    masks = np.zeros((n, size, size), dtype=bool)
    for m in masks:
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(2, 8, 2)
            m[y : y + h, x : x + w] = True
    maps = rng.gamma(2.0, 1.0, masks.shape) + masks * rng.uniform(0.5, 3.0)
    return masks, maps.astype(np.float32)


@pytest.mark.parametrize("seed", range(6))
def test_binned_agrees_with_exact_within_its_bound(seed):
    rng = np.random.default_rng(seed)
    masks, maps = blobs(rng, 6, 48)
    bins = int(rng.choice([64, 1024, 16384]))
    hist = PixelHistogram(bins, range=(float(maps.min()), float(maps.max()))).update(masks, maps)
    exact_auroc, exact_aupro = pixel_auroc(masks, maps, mode="exact"), aupro(masks, maps, mode="exact")
    assert abs(hist.pixel_auroc() - exact_auroc) <= hist.auroc_bound() + 1e-12
    assert abs(hist.aupro() - exact_aupro) <= hist.aupro_bound() + 1e-12
    assert pixel_auroc(masks, maps, mode="binned", bins=bins) == pytest.approx(hist.pixel_auroc())
    if bins == 16384:  # the documented typical tolerance of the default
        assert hist.auroc_bound() < 1e-4 and abs(hist.pixel_auroc() - exact_auroc) < 1e-4
        assert abs(hist.aupro() - exact_aupro) < 1e-3


def test_streaming_with_growing_range_matches_exact_within_bound():
    rng = np.random.default_rng(7)
    masks, maps = blobs(rng, 8, 40)
    maps[0] *= 0.01  # the first batch spans a tiny range, later ones force the grid to widen
    maps[5] -= 3.0  # and one reaches below it
    hist = PixelHistogram(bins=4096)
    for i in range(0, 8, 2):
        hist.update(masks[i : i + 2], maps[i : i + 2])
    assert hist.images == 8
    exact_auroc, exact_aupro = pixel_auroc(masks, maps, mode="exact"), aupro(masks, maps, mode="exact")
    assert abs(hist.pixel_auroc() - exact_auroc) <= hist.auroc_bound() + 1e-12
    assert abs(hist.aupro() - exact_aupro) <= hist.aupro_bound() + 1e-12
    assert hist.auroc_bound() < 1e-2 and abs(hist.pixel_auroc() - exact_auroc) < 1e-4
    assert hist.normal.sum() + hist.defect.sum() == masks.size


def test_widening_moves_no_count_to_a_wrong_bin():
    hist = PixelHistogram(bins=8, range=None)
    hist.update(np.array([[1, 0, 0, 0]]), np.array([[0.0, 1.0, 2.0, 3.0]]))
    hist.update(np.array([[0, 0]]), np.array([[-5.0, 20.0]]))
    edges = hist.lo + hist.width * np.arange(hist.bins + 1)
    for value, expected in [(0.0, "defect"), (3.0, "normal"), (-5.0, "normal"), (20.0, "normal")]:
        b = int(np.searchsorted(edges, value, side="right") - 1)
        assert getattr(hist, expected)[b] >= 1


def test_fixed_range_clips_outside_scores_into_end_bins():
    hist = PixelHistogram(bins=4, range=(0.0, 1.0)).update(np.array([[1, 0]]), np.array([[5.0, -5.0]]))
    assert hist.defect[-1] == 1 and hist.normal[0] == 1
    assert hist.pixel_auroc() == 1.0


def test_histogram_rejects_bad_settings_and_empty_use():
    with pytest.raises(MetricError, match="even"):
        PixelHistogram(bins=7)
    with pytest.raises(MetricError, match="range"):
        PixelHistogram(range=(1.0, 0.0))
    with pytest.raises(MetricError, match="no images"):
        PixelHistogram().pixel_auroc()


def test_streaming_memory_does_not_grow_with_the_test_set():
    rng = np.random.default_rng(0)
    mask = np.zeros((1024, 1024), dtype=bool)
    mask[100:200, 300:420] = True
    mask[700:705, 10:900] = True
    base = rng.gamma(2.0, 1.0, mask.shape).astype(np.float32)

    def peak(n_images):
        hist = PixelHistogram()
        tracemalloc.start()
        for i in range(n_images):
            hist.update(mask, base + mask * (1.0 + 0.1 * i))  # each map made as it is scored
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top, hist

    small, _ = peak(2)
    large, hist = peak(8)
    assert large < small * 1.2 + (1 << 20)
    assert large < 120 * (1 << 20)  # 8 maps of 1024 x 1024 float32 alone are 32 MiB, all pixels far more
    assert hist.images == 8 and 0.5 < hist.pixel_auroc() <= 1.0
