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
    from x and quantized: s (g - 2 (g.w) w + 2 (g.q) u) with u, q, w and s = |quantized|/|x| as there,
    in closed form lam g + alpha x + beta q (five row dot products, no unit vectors formed)."""
    lam, alpha, beta = rotation_coefficients(x, quantized, grad)
    return grad * lam + x * alpha + quantized * beta


def rotation_coefficients(x: torch.Tensor, q: torch.Tensor, g: torch.Tensor):
    """Per-row (lam, alpha, beta) [..., 1] with rotation_trick's input gradient = lam g + alpha x + beta q."""
    dot = torch.linalg.vecdot
    xx, qq, xq, gx, gq = dot(x, x), dot(q, q), dot(x, q), dot(g, x), dot(g, q)
    nx, nq = xx.sqrt().clamp_min(_SAFE), qq.sqrt().clamp_min(_SAFE)
    ns = (xx / nx.square() + qq / nq.square() + 2 * xq / (nx * nq)).clamp_min(0).sqrt().clamp_min(_SAFE)
    gw = (gx / nx + gq / nq) / ns
    lam = qq.sqrt() / nx
    alpha = lam * (-2 * gw / (ns * nx) + 2 * gq / (nq * nx))
    beta = -2 * lam * gw / (ns * nq)
    return lam[..., None], alpha[..., None], beta[..., None]


class _LeanRotation(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
        return rotation_trick(x, quantized)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, quantized = ctx.saved_tensors
        return rotation_trick_grad(x, quantized, grad).to(x.dtype), None


def rotation_trick_lean(x: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """rotation_trick's values and input gradient (none to quantized, as there), keeping only x and quantized
    for the backward instead of the unit vectors and scale of the plain form."""
    return _LeanRotation.apply(x, quantized)
