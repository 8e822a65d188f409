"""Gradient estimators that carry the gradient of a quantised output back to its input."""

import torch
import torch.nn.functional as F

_SAFE = 1e-6


def straight_through(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward: quantized; backward: the identity to x (the straight-through estimator). Shapes [..., D]."""
    return x + (quantized - x).detach()


class _StraightThroughCodes(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, codes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return F.embedding(index, codes).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


def straight_through_codes(x: torch.Tensor, codes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """codes[index] [N, D] (in x's dtype) whose gradient goes to x [N, D] unchanged and not to codes.

    The same values and gradients as straight_through(x, codes[index]) without its two N x D temporaries.
    """
    return _StraightThroughCodes.apply(x, codes, index)


def rotation_trick(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """Forward: quantized; backward: through the rotation and rescaling that maps x onto quantized.

    The rotation trick (Fifty et al., 2024, "Restructuring Vector Quantization with the Rotation
    Trick", section 4.2): with u = x/|x|, q = quantized/|quantized| and w = (u+q)/|u+q|, the output is
    (x - 2 (x.w) w + 2 (x.u) q) |quantized|/|x| where u, q, w and the scale are constants to autograd.
    Shapes [..., D].
    """
    norm_x = x.norm(dim=-1, keepdim=True)
    norm_q = quantized.norm(dim=-1, keepdim=True)
    u = (x / norm_x.clamp_min(_SAFE)).detach()
    q = (quantized / norm_q.clamp_min(_SAFE)).detach()
    w = F.normalize(u + q, dim=-1, eps=_SAFE).detach()
    rotated = x - 2 * (x * w).sum(-1, keepdim=True) * w + 2 * (x * u).sum(-1, keepdim=True) * q
    return rotated * (norm_q / norm_x.clamp_min(_SAFE)).detach()


def rotation_trick_grad(x: torch.Tensor, quantized: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient into x [..., D] of rotation_trick(x, quantized) for an output gradient `grad`, recomputed
    from x and quantized: s (g - 2 (g.w) w + 2 (g.q) u) with u, q, w and s = |quantized|/|x| as there."""
    norm_x = x.norm(dim=-1, keepdim=True)
    norm_q = quantized.norm(dim=-1, keepdim=True)
    u = x / norm_x.clamp_min(_SAFE)
    q = quantized / norm_q.clamp_min(_SAFE)
    w = F.normalize(u + q, dim=-1, eps=_SAFE)
    out = grad - 2 * (grad * w).sum(-1, keepdim=True) * w + 2 * (grad * q).sum(-1, keepdim=True) * u
    return out * (norm_q / norm_x.clamp_min(_SAFE))
