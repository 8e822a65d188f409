"""Plain-PyTorch stand-ins for the custom ops `patchvq::nearest_code` and `patchvq::patch_assign`
while a graph is exported: the distances as one matmul and an argmin (standard ONNX MatMul,
ArgMin, Gather), and patch_assign as its dense reference composition (every level quantised,
then selected per patch with Where), so the exported graph has static shapes and no custom op."""

from __future__ import annotations

import contextlib

import torch

from patchvq.reference.nearest_code import distance_to, normalize
from patchvq.reference.patch_assign import patch_assign_dense


def dense_nearest_code(x: torch.Tensor, codebook: torch.Tensor, metric: str = "l2", *args, **kwargs):
    """(index int64[N], distance[N]) of the nearest row of codebook[K, D] to each row of x[N, D]."""
    xs, cb = x.float(), codebook.float()
    if metric == "cosine":
        xs, cb = normalize(xs), normalize(cb)
        scores = -(xs @ cb.t())
    else:
        scores = cb.pow(2).sum(1)[None] - 2.0 * (xs @ cb.t())
    index = scores.argmin(1)
    return index, distance_to(x.float(), codebook.float()[index], metric)


def dense_patch_assign(levels, choice, codebook, metric: str = "l2", *args, **kwargs):
    return patch_assign_dense(levels, choice, codebook, metric, search=dense_nearest_code)


def _router_forward(self, levels):
    """DynamicRouter.forward with the pooling to the coarsest grid as a fixed-kernel AveragePool
    (the exporter cannot write adaptive pooling to a traced size); the same numbers, as every
    level's grid is the coarsest one times a power of two."""
    import torch.nn.functional as F

    coarse = int(levels[-1].shape[2])
    pooled = [F.avg_pool2d(lv, int(lv.shape[2]) // coarse) if int(lv.shape[2]) != coarse else lv for lv in levels]
    return self.mlp(torch.cat(pooled, 1))


_movedim = torch.Tensor.movedim


def _movedim_positive(self, source, destination):
    """movedim with non-negative dims (the exporter writes a negative dim into Transpose's perm)."""
    n = self.dim()
    fix = (lambda d: d % n) if isinstance(source, int) else (lambda ds: [d % n for d in ds])
    return _movedim(self, fix(source), fix(destination) if isinstance(destination, int) else
                    [d % n for d in destination])


# Every module that bound the custom ops by name, and the name it bound.
_SITES = (
    ("patchvq.models.autoencoder", "nearest_code", dense_nearest_code),
    ("patchvq.models.knn", "nearest_code", dense_nearest_code),
    ("patchvq.layers.codebook", "nearest_code", dense_nearest_code),
    ("patchvq.layers.vector_quantize", "nearest_code", dense_nearest_code),
    ("patchvq.layers.residual_vq", "nearest_code", dense_nearest_code),
    ("patchvq.layers.patch_vq", "patch_assign", dense_patch_assign),
)


@contextlib.contextmanager
def standard_operators():
    """Within the block, the models call the plain-PyTorch formulations instead of the custom ops."""
    import importlib

    saved = []
    try:
        for module_name, attr, replacement in _SITES:
            module = importlib.import_module(module_name)
            if hasattr(module, attr):
                saved.append((module, attr, getattr(module, attr)))
                setattr(module, attr, replacement)
        from patchvq.layers.routing import DynamicRouter

        saved.append((DynamicRouter, "forward", DynamicRouter.forward))
        DynamicRouter.forward = _router_forward
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the Budget Prior's layers as plain ops
        saved.append((torch.backends.mha, "_fastpath_restore", fastpath))
        saved.append((torch.Tensor, "movedim", torch.Tensor.movedim))
        torch.Tensor.movedim = _movedim_positive
        yield
    finally:
        for module, attr, original in reversed(saved):
            if attr == "_fastpath_restore":
                torch.backends.mha.set_fastpath_enabled(original)
            else:
                setattr(module, attr, original)
