"""The ops layer: public functions over the kernels, with validation and backend choice."""

from patchvq.ops.code_stats import code_stats
from patchvq.ops.nearest_code import nearest_code
from patchvq.ops.patch_assign import patch_assign

__all__ = ["code_stats", "nearest_code", "patch_assign"]
