"""Context richness of image patches: how evenly a patch's detail spreads over wavelet bands."""

import math

import torch

# The 7 bands of a 2-level Haar transform: LL2, LH2, HL2, HH2 (level 2) and LH1, HL1, HH1 (level 1).
NUM_BANDS = 7


def haar_step(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One orthonormal 2-D Haar step of x [..., 2h, 2w]: (LL, LH, HL, HH), each [..., h, w]."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 2, (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2


def band_density(band: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean squared coefficient per patch of band [B, C, h, w] in `patch`-sized tiles, summed over C: [B, h/p, w/p]."""
    batch, channels, h, w = band.shape
    tiles = band.reshape(batch, channels, h // patch, patch, w // patch, patch)
    return tiles.pow(2).mean((3, 5)).sum(1)


def context_richness(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Normalised entropy in [0, 1] of the 2-level Haar wavelet energies of each patch: [B, H/p, W/p].

    images: [B, C, H, W] (any C; band energies are summed over channels), H and W multiples of
    patch_size, patch_size a multiple of 4. Each patch's mean is removed first (brightness is
    not content), then each band's energy is its mean squared coefficient (energy per
    coefficient, so white noise spreads evenly over the 7 bands and scores about 1). The result
    is -sum p log p / log 7 over the bands' shares p. A flat patch (no energy left) scores 0,
    a smooth ramp or a single edge lands in between, texture close to 1.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
        got = f"shape {tuple(images.shape)}, {images.dtype}" if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"patchvq: images must be a floating [B, C, H, W] tensor, got {got}")
    if not isinstance(patch_size, int) or patch_size < 4 or patch_size % 4:
        raise ValueError(f"patchvq: patch_size must be a positive multiple of 4, got {patch_size!r}")
    batch, channels, h, w = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patchvq: image size {h}x{w} is not a multiple of patch_size={patch_size}")
    if images.numel() == 0:  # no images, no pixels or no channels: every patch is flat
        return images.new_zeros(batch, h // patch_size, w // patch_size)
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"patchvq: images contain NaN or Inf (shape {tuple(images.shape)})")
    x = images.float() if images.dtype != torch.float64 else images
    # The result does not depend on the images' scale: bring each image's largest |value| to
    # [0.5, 1) by a power of two, so energies neither overflow (1e30) nor underflow (1e-30).
    exponent = torch.frexp(x.abs().amax((1, 2, 3), keepdim=True))[1]
    x = torch.ldexp(x, -exponent)
    tiles = x.reshape(batch, channels, h // patch_size, patch_size, w // patch_size, patch_size)
    x = (tiles - tiles.mean((3, 5), keepdim=True)).reshape(batch, channels, h, w)
    ll1, *fine_bands = haar_step(x)
    ll2, *mid_bands = haar_step(ll1)
    energies = [band_density(band, patch_size // 4) for band in (ll2, *mid_bands)]
    energies += [band_density(band, patch_size // 2) for band in fine_bands]
    energy = torch.stack(energies, -1)
    total = energy.sum(-1, keepdim=True)
    tiny = torch.finfo(energy.dtype).tiny
    share = energy / total.clamp_min(tiny)
    entropy = -(share * share.clamp_min(tiny).log()).sum(-1) / math.log(NUM_BANDS)
    # Energy at rounding level of the pixel values is no content: such a patch counts as flat.
    floor = (torch.finfo(x.dtype).eps * x.abs().amax((1, 2, 3))).pow(2)[:, None, None]
    richness = torch.where(total[..., 0] > floor, entropy.abs().clamp(max=1.0), torch.zeros_like(entropy))
    return richness.to(images.dtype)
