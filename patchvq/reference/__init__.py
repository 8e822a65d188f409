"""Plain-PyTorch references of every op: the specification, the test oracle and the fallback.

Nothing here imports the loader or a native kernel, so these run wherever torch runs.
"""

from patchvq.reference.code_softmax import code_logsumexp, code_prob_sum, topk_code
from patchvq.reference.code_stats import code_stats
from patchvq.reference.nearest_code import distance_to, nearest_code
from patchvq.reference.patch_assign import patch_assign, patch_assign_backward

__all__ = ["code_logsumexp", "code_prob_sum", "code_stats", "distance_to", "nearest_code", "patch_assign", "patch_assign_backward", "topk_code"]
