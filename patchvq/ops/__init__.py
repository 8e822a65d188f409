"""The ops layer: the patchvq:: torch ops (defined at import) and their public functions.

Modules, top down (each imports only those below it): functions (the public functions) ->
library (schemas, kernels per device, fake kernels, autograd) -> backend (which implementation
runs), fake, gradients, validate -> native (the JIT loader), triton_backend, inputs (input
preparation shared by the fast paths) -> sources.
"""

from patchvq.ops.functions import code_logsumexp, code_prob_sum, code_stats, nearest_code, patch_assign, topk_code

__all__ = ["code_logsumexp", "code_prob_sum", "code_stats", "nearest_code", "patch_assign", "topk_code"]
