"""The layers: the shared Codebook, VectorQuantize, and (lazily) PatchVQ and context_richness."""

import importlib

from patchvq.layers.codebook import Codebook
from patchvq.layers.vector_quantize import VectorQuantize

_LAZY = {
    "PatchVQ": "patchvq.layers.patch_vq",
    "context_richness": "patchvq.layers.context_richness",
}

__all__ = ["Codebook", "PatchVQ", "VectorQuantize", "context_richness"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'patchvq.layers' has no attribute {name!r}")
