"""context_richness: normalised entropy of 2-level Haar wavelet energies per patch."""

import pytest
import torch

from patchvq.layers.context_richness import context_richness, haar_step

P = 32


def grid():
    return torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")


def test_flat_patch_is_zero():
    for value in (0.0, 0.7, 123.0):
        assert context_richness(torch.full((1, 3, P, P), value), P).abs().max() < 1e-6


def test_white_noise_is_close_to_one():
    gen = torch.Generator().manual_seed(0)
    uniform = torch.rand(4, 3, P, P, generator=gen)
    gaussian = 5 + 2 * torch.randn(4, 1, P, P, generator=gen)
    assert context_richness(uniform, P).min() > 0.97
    assert context_richness(gaussian, P).min() > 0.97


def test_strong_edge_is_in_between():
    y, x = grid()
    diagonal = (x > y).float()[None, None]
    off_grid = (x >= 15).float()[None, None]
    for edge in (diagonal, off_grid):
        value = context_richness(edge, P).item()
        assert 0.05 < value < 0.6, value
    noise = torch.rand(1, 1, P, P, generator=torch.Generator().manual_seed(1))
    assert context_richness(diagonal, P) < context_richness(noise, P)


def test_invariant_to_brightness_contrast_and_channel_copies():
    gen = torch.Generator().manual_seed(2)
    image = torch.rand(2, 1, 2 * P, 3 * P, generator=gen) ** 3
    base = context_richness(image, P)
    assert base.shape == (2, 2, 3)
    torch.testing.assert_close(context_richness(4 * image + 10, P), base, atol=1e-4, rtol=0)
    torch.testing.assert_close(context_richness(image.expand(2, 3, -1, -1), P), base, atol=1e-5, rtol=0)
    assert bool(((base >= 0) & (base <= 1)).all())


def test_patches_are_independent():
    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 1, 2 * P, 2 * P, generator=gen)
    changed = image.clone()
    changed[..., :P, :P] = 0.5
    a, b = context_richness(image, P), context_richness(changed, P)
    assert a[0, 0, 0] > 0.9 and b[0, 0, 0] == 0
    torch.testing.assert_close(a[0].flatten()[1:], b[0].flatten()[1:])


def test_haar_step_is_orthonormal():
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    bands = haar_step(x)
    torch.testing.assert_close(sum(b.pow(2).sum() for b in bands), x.pow(2).sum())


@pytest.mark.parametrize(
    "images, patch, pattern",
    [
        (torch.zeros(1, 1, 32, 32), 6, "multiple of 4"),
        (torch.zeros(1, 1, 32, 40), 32, "not a multiple"),
        (torch.zeros(1, 32, 32), 8, r"\[B, C, H, W\]"),
        (torch.zeros(1, 1, 32, 32, dtype=torch.int64), 8, "floating"),
    ],
)
def test_bad_input(images, patch, pattern):
    with pytest.raises(ValueError, match=pattern):
        context_richness(images, patch)
