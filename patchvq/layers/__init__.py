"""The layers: the shared Codebook, VectorQuantize, ResidualVQ, GroupedResidualVQ, and (lazily) PatchVQ and
context_richness."""

import importlib

from patchvq.layers.codebook import Codebook
from patchvq.layers.residual_vq import GroupedResidualVQ, ResidualVQ
from patchvq.layers.vector_quantize import VectorQuantize, upstream_state_dict

_LAZY = {
    "PatchVQ": "patchvq.layers.patch_vq",
    "context_richness": "patchvq.layers.context_richness",
}

__all__ = ["Codebook", "GroupedResidualVQ", "PatchVQ", "ResidualVQ", "VectorQuantize", "context_richness",
           "upstream_state_dict"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'patchvq.layers' has no attribute {name!r}")
