"""patchvq: fast, memory-lean vector quantisation and patch-aware VQ for visual defect detection.

Importing patchvq never compiles anything: the C++ kernels build on the first call that
needs them (see `python -m patchvq info`).
"""

import importlib

from patchvq.ops import code_logsumexp, code_prob_sum, code_stats, nearest_code, patch_assign, topk_code

__version__ = "0.1.0"

_LAZY = {
    "VectorQuantize": "patchvq.layers",
    "ResidualVQ": "patchvq.layers",
    "GroupedResidualVQ": "patchvq.layers",
    "upstream_state_dict": "patchvq.layers",
    "PatchVQ": "patchvq.layers",
    "context_richness": "patchvq.layers",
}

__all__ = ["GroupedResidualVQ", "PatchVQ", "ResidualVQ", "VectorQuantize", "__version__", "code_logsumexp", "code_prob_sum",
           "code_stats", "context_richness", "nearest_code", "patch_assign", "topk_code", "upstream_state_dict"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'patchvq' has no attribute {name!r}")
