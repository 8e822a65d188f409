"""Input layouts of the quantisation layers: turning [B, N, D], [B, D, N], [B, D, H, W] or [B, D] into rows and back."""

from typing import NamedTuple

import torch


class Layout(NamedTuple):
    """Where the channels of an input are: index_shape is its shape without the channel axis."""

    index_shape: tuple[int, ...]
    dim: int
    channels_last: bool


def of_input(x: torch.Tensor, dim: int, channel_last: bool, accept_image_fmap: bool,
             accept_3d_fmap: bool = False) -> Layout:
    """The layout of x, checked against the expected channel count `dim`; raises ValueError naming the shape."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"patchvq: x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if accept_3d_fmap:
        if x.dim() != 5:
            raise ValueError(f"patchvq: with accept_3d_fmap=True x must be [B, D, T, H, W], got {tuple(x.shape)}")
        channel_axis, channels_last = 1, False
    elif accept_image_fmap:
        if x.dim() != 4:
            raise ValueError(f"patchvq: with accept_image_fmap=True x must be [B, D, H, W], got {tuple(x.shape)}")
        channel_axis, channels_last = 1, False
    elif x.dim() == 2:
        channel_axis, channels_last = 1, True
    elif x.dim() == 3:
        channel_axis, channels_last = (2, True) if channel_last else (1, False)
    else:
        raise ValueError(f"patchvq: x must be [B, N, D] (or [B, D, N] with channel_last=False, [B, D] for one "
                         f"vector per sample, [B, D, H, W] with accept_image_fmap=True), got {tuple(x.shape)}")
    if x.shape[channel_axis] != dim:
        raise ValueError(f"patchvq: x has {x.shape[channel_axis]} channels on axis {channel_axis} but the layer "
                         f"has dim={dim} (x {tuple(x.shape)})")
    index_shape = tuple(s for i, s in enumerate(x.shape) if i != channel_axis)
    return Layout(index_shape, dim, channels_last)


def to_rows(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """x as rows [M, D], M the product of index_shape."""
    moved = x if layout.channels_last else x.movedim(1, -1)
    return moved.reshape(-1, layout.dim)


def from_rows(rows: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Rows [M, C] laid out like the input (channels on the input's channel axis)."""
    out = rows.reshape(*layout.index_shape, rows.shape[-1])
    return out if layout.channels_last else out.movedim(-1, 1)


def mask_rows(mask: torch.Tensor | None, index_shape: tuple[int, ...]) -> torch.Tensor | None:
    """A bool mask of index_shape as [M] (None stays None); raises ValueError on a mismatch."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"patchvq: mask must be a bool tensor, got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != tuple(index_shape):
        raise ValueError(f"patchvq: mask must have shape {tuple(index_shape)} (the input without D), "
                         f"got {tuple(mask.shape)}")
    return mask.reshape(-1)
